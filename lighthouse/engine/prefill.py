"""Prefill: run the prompt through the model once, writing every layer's K/V for every position to the cache.

Plan for a prompt of N tokens (see `plan_prefill`):
- `split` = N - dense_tail_tokens when that reaches the checkpoint's min_seq_len (and the op's minimum);
  0 when the prompt is too short or the model has no Lighthouse layers: then everything is dense.
- sparse: positions [0, split) in one pass where the checkpoint's Lighthouse layers run the op and its
  full-attention layers run dense causal attention; then the tail [split, N) densely against the whole cache.
- dense: positions [0, N) in one pass of dense causal attention in every layer.
Only the last position's logits are computed. With sparse decode, each Lighthouse layer also keeps the
prompt's selected sub-sequence (sparse_context.py) for [0, split).
A prefix-cache hit (prefix_cache.py says what is reusable) puts positions [0, cached) in the cache first; then
only [cached, N) run, densely against the cache (for a sparse plan, cached >= split: the whole head was reused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import SequenceKV
from lighthouse.engine.sparse_context import select_context, selected_entries
from lighthouse.ops.attention import attention_with_cache, causal_attention, repeat_kv


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


def lighthouse_config(model):
    lh = getattr(model.config, "lighthouse", None)
    if lh is None or not getattr(lh, "enabled", True) or int(getattr(lh, "levels", 0) or 0) < 2:
        return None
    return lh


def min_sparse_len(lh) -> int:
    from lighthouse.ops import lighthouse_min_seq_len

    op_min = lighthouse_min_seq_len(lh.levels, lh.pooling_factor, lh.topk)
    return max(op_min, int(getattr(lh, "min_seq_len", 0) or 0))


def plan_prefill(model, prompt_len: int, *, prefill: str, decode: str, dense_tail_tokens: int) -> PrefillPlan:
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


def run_prefill(
    model,
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
    device = kv.k[0].device
    ids = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None]  # (1, N)
    N = len(prompt_ids)
    if not 0 <= cached < N or (cached and plan.sparse and cached < plan.split) or (cached and plan.sparse_decode):
        raise ValueError(f"cannot resume a prefill of {N} tokens (split {plan.split}) at position {cached}")
    split = plan.split
    start = max(split, cached) if plan.sparse else cached  # where the pass against the cache starts (0: none)
    lh_layers = set(plan.lighthouse_layers)

    def head_attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (1, H, n, D), k/v (1, H_kv, n, D)
        if should_abort():
            raise PrefillAborted
        n = q.shape[2]
        kv.k[i][:, :, :n].copy_(k)
        kv.v[i][:, :, :n].copy_(v)
        if plan.sparse_decode and i in lh_layers:
            _keep_sparse_context(kv, i, q[:, :, :split], k[:, :, :split], v[:, :, :split], lh, plan)
        if plan.sparse and i in lh_layers:
            from lighthouse.ops import lighthouse_attention

            out = lighthouse_attention(q, k, v, levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk,
                                       scorer=getattr(lh, "scorer", "norm"))
        else:
            out = causal_attention(q, k, v)
        if on_layer is not None:
            on_layer(i)
        return out

    def tail_attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (1, H, N - start, D)
        if should_abort():
            raise PrefillAborted
        kv.k[i][:, :, start:N].copy_(k)
        kv.v[i][:, :, start:N].copy_(v)
        out = attention_with_cache(q, kv.k[i][:, :, :N], kv.v[i][:, :, :N])
        if on_layer is not None:
            on_layer(i)
        return out

    with torch.no_grad():
        if plan.sparse and not cached:
            model(ids[:, :split], positions=_positions(0, split, device), attention=head_attention, logits_to_keep=1)
        if start:
            out = model(ids[:, start:], positions=_positions(start, N, device), attention=tail_attention, logits_to_keep=1)
        else:
            out = model(ids, positions=_positions(0, N, device), attention=head_attention, logits_to_keep=1)
    kv.length = N
    if plan.sparse_decode:
        _append_tail_to_sparse(kv, plan)
    return out.logits[0, -1].float()


def _keep_sparse_context(kv: SequenceKV, i: int, q: Tensor, k: Tensor, v: Tensor, lh, plan: PrefillPlan) -> None:
    """Store layer i's selected (1, H, S, D) K/V at the front of a buffer with room for every later position."""
    sel_k, sel_v, valid = select_context(q, k, v, levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk,
                                         scorer=getattr(lh, "scorer", "norm"))
    cap = plan.selected + (kv.capacity - plan.split)
    B, H, S, D = sel_k.shape
    buf_k = torch.empty((1, H, cap, D), dtype=sel_k.dtype, device=sel_k.device)
    buf_v = torch.empty_like(buf_k)
    buf_k[:, :, :S].copy_(sel_k)
    buf_v[:, :, :S].copy_(sel_v)
    kv.sparse_k[i], kv.sparse_v[i] = buf_k, buf_v
    if valid is not None:  # entries over the op's padding only: never attended
        mask = torch.ones((1, H, 1, cap), dtype=torch.bool, device=sel_k.device)
        mask[..., :S] = valid
        kv.sparse_mask[i] = mask


def _append_tail_to_sparse(kv: SequenceKV, plan: PrefillPlan) -> None:
    """Positions [split, N) join the sparse buffers at full resolution (heads repeated to H)."""
    S, split, N = plan.selected, plan.split, kv.length
    for i, buf_k in kv.sparse_k.items():
        n_rep = buf_k.shape[1] // kv.k[i].shape[1]
        buf_k[:, :, S : S + N - split].copy_(repeat_kv(kv.k[i][:, :, split:N], n_rep))
        kv.sparse_v[i][:, :, S : S + N - split].copy_(repeat_kv(kv.v[i][:, :, split:N], n_rep))
    kv.sparse_from = split
    kv.sparse_len = S + N - split
