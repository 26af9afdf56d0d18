"""Prefill: run the prompt through the model once, writing every layer's K/V for every position to the cache.

Plan for a prompt of N tokens (see `plan_prefill`):
- `split` = N - dense_tail_tokens when that reaches the checkpoint's min_seq_len (and the op's minimum);
  0 when the prompt is too short or the model has no Lighthouse layers: then everything is dense.
- sparse: positions [0, split) in one pass where the checkpoint's Lighthouse layers run the op and its
  full-attention layers run dense causal attention; then the tail [split, N) densely against the whole cache.
- dense: positions [0, N) in one pass of dense causal attention in every layer.
Only the last position's logits are computed. K/V go to the sequence's blocks of the paged cache (kv_cache.py).
With sparse decode, each Lighthouse layer also keeps the prompt's selected sub-sequence for [0, split), as the
op's own call returned it (sparse_context.py), followed by the tail positions, in the sequence's context table.
A prefix-cache hit (prefix_cache.py says what is reusable) shares positions [0, cached) in the cache first; then
only [cached, N) run, densely against the cache (for a sparse plan, cached >= split: the whole head was reused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import KVPool, SequenceKV
from lighthouse.engine.sparse_context import order_context, real_entries, repeat_to_slots, selected_entries, to_slots
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.ops import lighthouse_attention, lighthouse_attention_with_context
from lighthouse.ops.attention import attention_with_cache, causal_attention
from lighthouse.ops.paged_attention import paged_decode_attention


class PrefillAborted(Exception):
    """Raised from inside the model's layer loop when the request was aborted mid-prefill."""


@dataclass
class PrefillPlan:
    prompt_len: int
    split: int  # positions [0, split) can take the sparse path; 0: none can
    sparse: bool  # run [0, split) through the Lighthouse layers (else all dense)
    sparse_decode: bool  # keep the selected sub-sequence for sparse decode
    lighthouse_layers: tuple[int, ...]  # layers that use the op at length `split`
    selected: int  # S per head per Lighthouse layer (0 without sparse decode)

    @property
    def sparse_tokens(self) -> int:
        return self.split if self.sparse else 0

    @property
    def dense_tokens(self) -> int:
        return self.prompt_len - self.sparse_tokens

    @property
    def path(self) -> str:
        return "sparse" if self.sparse else "dense"


def lighthouse_config(model: LlamaForCausalLM) -> LighthouseConfig | None:
    lh = model.config.lighthouse
    return lh if lh.enabled and lh.levels >= 2 else None


def min_sparse_len(lh: LighthouseConfig) -> int:
    from lighthouse.ops import lighthouse_min_seq_len

    return max(lighthouse_min_seq_len(lh.levels, lh.pooling_factor, lh.topk), lh.min_seq_len)


def plan_prefill(model: LlamaForCausalLM, prompt_len: int, *, prefill: str, decode: str,
                 dense_tail_tokens: int) -> PrefillPlan:
    lh = lighthouse_config(model)
    split = 0
    if lh is not None and prompt_len - dense_tail_tokens >= min_sparse_len(lh):
        split = prompt_len - dense_tail_tokens
    layers = tuple(i for i in range(model.config.num_hidden_layers) if split and model.layer_uses_lighthouse(i, split))
    if not layers:
        split = 0
    sparse_decode = decode == "sparse" and split > 0
    selected = selected_entries(split, lh.levels, lh.pooling_factor, lh.topk) if sparse_decode else 0
    return PrefillPlan(prompt_len, split, prefill == "sparse" and split > 0, sparse_decode, layers, selected)


def _positions(start: int, end: int, device) -> Tensor:
    return torch.arange(start, end, device=device)[None]  # (1, n)


def _rows(x: Tensor) -> Tensor:
    return x[0].transpose(0, 1)  # (1, H_kv, n, D) -> (n, H_kv, D)


def run_prefill(
    model: LlamaForCausalLM,
    pool: KVPool,
    kv: SequenceKV,
    prompt_ids: list[int],
    plan: PrefillPlan,
    *,
    cached: int = 0,
    should_abort: Callable[[], bool] = lambda: False,
    on_layer: Callable[[int], None] | None = None,
) -> Tensor:
    """Fill `kv` with the prompt's K/V; returns the last position's logits (V,) in float32.

    `cached`: positions [0, cached) are in `kv` already (a prefix-cache hit); for a sparse plan 0 or >= split."""
    lh = lighthouse_config(model)
    device = pool.k.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long)  # (N,) on the CPU
    N = int(prompt.shape[0])
    if not 0 <= cached < N or (cached and plan.sparse and cached < plan.split) or (cached and plan.sparse_decode):
        raise ValueError(f"cannot resume a prefill of {N} tokens (split {plan.split}) at position {cached}")
    split = plan.split
    start = max(split, cached) if plan.sparse else cached  # where the pass against the cache starts (0: none)
    head_end = split if plan.sparse and not cached else (0 if start else N)  # the pass from position 0, if any
    lh_layers = set(plan.lighthouse_layers)
    table = torch.tensor(kv.blocks, dtype=torch.long)
    tail = CachedTail.make(pool, kv.blocks, start, N) if start and start < N else None
    head_slots = pool.slots(table, 0, head_end) if head_end else None  # the same in every layer: made once
    tail_slots = pool.slots(table, start, N) if tail is not None else None

    def head_attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (1, H, n, D), k/v (1, H_kv, n, D)
        if should_abort():
            raise PrefillAborted
        n = q.shape[2]
        pool.write(i, head_slots, _rows(k), _rows(v))
        kw = dict(levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk, scorer=lh.scorer) if lh else {}
        if plan.sparse_decode and i in lh_layers:
            out, k_sel, v_sel, idx = lighthouse_attention_with_context(q, k, v, **kw)
            _keep_context(pool, kv, i, k_sel, v_sel, real_entries(idx, n, lh.levels, lh.pooling_factor, lh.topk))
        elif plan.sparse and i in lh_layers:
            out = lighthouse_attention(q, k, v, **kw)
        else:
            out = causal_attention(q, k, v)
        if on_layer is not None:
            on_layer(i)
        return out

    def tail_attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (1, H, N - start, D)
        if should_abort():
            raise PrefillAborted
        pool.write(i, tail_slots, _rows(k), _rows(v))
        if tail.paged:
            out = tail.attention(q, pool.k[i], pool.v[i])
        else:
            k_all, v_all = pool.read(i, kv.blocks, N)
            out = attention_with_cache(q, k_all, v_all)
        if on_layer is not None:
            on_layer(i)
        return out

    with torch.no_grad():
        if head_end:  # positions [0, head_end): the sparse head, or the whole prompt densely
            out = model(prompt[None, :head_end].to(device), positions=_positions(0, head_end, device),
                        attention=head_attention, logits_to_keep=1)
        if tail is not None:  # positions [start, N) against the cache
            out = model(prompt[None, start:].to(device), positions=_positions(start, N, device),
                        attention=tail_attention, logits_to_keep=1)
    kv.length = N
    if plan.sparse_decode:
        _append_tail_to_context(pool, kv, plan)
    return out.logits[0, -1].float()


@dataclass
class CachedTail:
    """Causal attention of the queries at positions [start, N) against a table's entries [0, N).

    On CUDA (`paged`) it runs the paged decode kernel over the table itself, no copy of the cache: the query of
    position t becomes one more query head of its KV group, and a per-head hole [t + 1, N) masks the positions
    after it (bottom-right causal alignment). Elsewhere the caller reads the cache out and uses dense attention."""

    paged: bool
    start: int
    n: int
    table: Tensor | None = None  # (1, blocks) int32 on the device
    _row_args: dict = field(default_factory=dict)  # (chunk, H_kv, r) -> the kernel's per-row tensors: the same in every layer

    MAX_QUERIES = 256  # longer tails use dense attention over the read-out cache
    ROWS = 64  # queries x group heads per kernel call

    @staticmethod
    def make(pool: KVPool, blocks: list[int], start: int, n: int) -> "CachedTail":
        paged = pool.k.is_cuda and n - start <= CachedTail.MAX_QUERIES
        table = torch.tensor([blocks], dtype=torch.int32, device=pool.k.device) if paged else None
        return CachedTail(paged, start, n, table)

    def _rows(self, c0: int, n: int, H_kv: int, r: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(seq_lens = [N], per_head = [0], hole_start (1, H_kv*n*r)) for the queries [c0, c0 + n) of the tail."""
        key = (c0, n, H_kv, r)
        if key not in self._row_args:
            i32 = torch.int32
            pos = torch.arange(self.start + c0, self.start + c0 + n, device=dev, dtype=i32)  # (n,)
            hole = (pos + 1)[None, :, None].expand(H_kv, n, r).reshape(1, H_kv * n * r).contiguous()
            self._row_args[key] = (torch.tensor([self.n], dtype=i32, device=dev), torch.zeros(1, dtype=i32, device=dev),
                                   hole)
        return self._row_args[key]

    def attention(self, q: Tensor, k_cache: Tensor, v_cache: Tensor) -> Tensor:  # q (1, H, n - start, D)
        _, H, Nq, D = q.shape
        H_kv = k_cache.shape[2]
        r = H // H_kv
        outs = []
        step = max(1, self.ROWS // r)
        for c0 in range(0, Nq, step):
            n = min(step, Nq - c0)
            qc = q[0, :, c0 : c0 + n].reshape(H_kv, r, n, D).transpose(1, 2).reshape(1, H_kv * n * r, D)
            full, per_head, hole = self._rows(c0, n, H_kv, r, q.device)
            o = paged_decode_attention(qc, k_cache, v_cache, self.table, full, per_head, hole, full)
            outs.append(o.view(H_kv, n, r, D).transpose(1, 2).reshape(H, n, D))
        return torch.cat(outs, dim=1)[None]


def _keep_context(pool: KVPool, kv: SequenceKV, i: int, k_sel: Tensor, v_sel: Tensor, real: Tensor) -> None:
    """Layer i's selected (1, H, S, D) K/V, real entries first per head, at context entries [0, S)."""
    k_sel, v_sel, n_real = order_context(k_sel, v_sel, real)
    H_kv = pool.shape.num_kv_heads
    S = k_sel.shape[2]
    pool.write(i, pool.slots(kv.ctx_blocks, 0, S * pool.shape.group), to_slots(k_sel, H_kv), to_slots(v_sel, H_kv))
    kv.ctx_hole_start, kv.ctx_hole_end, kv.ctx_len = n_real, S, S


def _append_tail_to_context(pool: KVPool, kv: SequenceKV, plan: PrefillPlan) -> None:
    """Positions [split, N) join the context at full resolution, as entries of every head of their group."""
    S, split, N, r = plan.selected, plan.split, kv.length, pool.shape.group
    src = pool.slots(kv.blocks, split, N)
    dst = pool.slots(kv.ctx_blocks, S * r, (S + N - split) * r)
    for i in plan.lighthouse_layers:
        k = pool.k[i].flatten(0, 1).index_select(0, src)
        v = pool.v[i].flatten(0, 1).index_select(0, src)
        pool.write(i, dst, repeat_to_slots(k, r), repeat_to_slots(v, r))
    kv.ctx_len = S + N - split
