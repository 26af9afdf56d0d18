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
A checkpoint with lighthouse.rope == "after_select": a layer that runs the op keeps its q/k un-rotated until the op
has run (the op rotates what it selects; sparse decode keeps its K so rotated); the cache always gets K rotated
as usual, and q/k are rotated in place before any dense attention of the layer (the tail). With
lighthouse.rope_freqs == "unscaled" the op rotates with the model's `lighthouse_inv_freq`, and the tail's K joins
the sparse-decode context rotated with those too (from the un-rotated K, before the in-place rotation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import KVPool, SequenceKV
from lighthouse.engine.prefill_attention import (CachedTail, append_tail_to_context, context_attention, keep_context,
                                                 query_chunks)
from lighthouse.engine.sparse_context import real_entries, repeat_to_slots, selected_entries
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.ops.rope import apply_rope, rope_cos_sin
from lighthouse.ops import lighthouse_attention, lighthouse_attention_with_context
from lighthouse.ops.attention import attention_with_cache
from lighthouse.ops.fused import rope_qk

DEFAULT_CHUNK_TOKENS = 32768  # token chunk of the projections and MLP; attention units of ~8 x its square in pairs


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
    compact: bool = False  # (with sparse decode) the Lighthouse layers keep only their context, no full cache

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


def sparse_unavailable(model: LlamaForCausalLM) -> str | None:
    """Why this checkpoint can never prefill (or decode, or keep compact sessions) sparsely, or None when it can:
    sparse paths need at least one layer that was trained with Lighthouse."""
    lh = model.config.lighthouse
    if not lh.enabled:
        why = "the checkpoint has no Lighthouse layers (its config.json has no `lighthouse` block)"
    elif lh.levels < 2:
        why = f"the checkpoint's lighthouse block has levels {lh.levels} (one level is dense attention)"
    elif all(i in lh.full_attn_layers for i in range(model.config.num_hidden_layers)):
        why = "every layer of the checkpoint is in lighthouse.full_attn_layers"
    else:
        return None
    return (f"sparse prefill unavailable: {why}, so every prompt is prefilled densely. A checkpoint trained with "
            "Lighthouse layers prefills sparsely (`lighthouse train`, or `lighthouse train --init-from` to adapt "
            "this one)")


def min_sparse_len(lh: LighthouseConfig) -> int:
    from lighthouse.ops import lighthouse_min_seq_len

    return max(lighthouse_min_seq_len(lh.levels, lh.pooling_factor, lh.topk), lh.min_seq_len)


def plan_prefill(model: LlamaForCausalLM, prompt_len: int, *, prefill: str, decode: str,
                 dense_tail_tokens: int, kv_mode: str = "full") -> PrefillPlan:
    lh = lighthouse_config(model)
    split = 0
    if lh is not None and prompt_len - dense_tail_tokens >= min_sparse_len(lh):
        split = prompt_len - dense_tail_tokens
    layers = tuple(i for i in range(model.config.num_hidden_layers) if split and model.layer_uses_lighthouse(i, split))
    if not layers:
        split = 0
    # sparse decode attends to what the op selected for the prompt: it needs the sparse prefill (else: dense decode,
    # as the response's prefill info says)
    sparse_decode = decode == "sparse" and prefill == "sparse" and split > 0
    selected = selected_entries(split, lh.levels, lh.pooling_factor, lh.topk) if sparse_decode else 0
    return PrefillPlan(prompt_len, split, prefill == "sparse" and split > 0, sparse_decode, layers, selected,
                       kv_mode == "compact" and sparse_decode)



def run_prefill(model: LlamaForCausalLM, pool: KVPool, kv: SequenceKV, prompt_ids, plan: PrefillPlan, *,
                cached: int = 0, should_abort: Callable[[], bool] = lambda: False,
                chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """A whole prefill in one go (`PrefillTask(...).run()`): the last position's logits (V,) float32."""
    task = PrefillTask(model, pool, kv, prompt_ids, plan, cached=cached, should_abort=should_abort,
                       chunk_tokens=chunk_tokens)
    logits = task.run()
    assert logits is not None
    return logits


@dataclass
class _Segment:
    """Queries [start, end) of one layer's attention: "op" (the Lighthouse op over [0, end), start 0) or "causal"
    (query t attends to keys [0, t])."""

    start: int
    end: int
    kind: str


class PrefillTask:
    """One prompt's prefill into `kv`, run in pieces: `run(budget_s)` until it returns the logits."""

    def __init__(self, model: LlamaForCausalLM, pool: KVPool, kv: SequenceKV, prompt_ids, plan: PrefillPlan, *,
                 cached: int = 0, should_abort: Callable[[], bool] = lambda: False,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, on_progress: Callable[[float], None] | None = None):
        self.prompt = torch.as_tensor(prompt_ids, dtype=torch.long)  # (N,) on the CPU
        N = self.N = int(self.prompt.shape[0])
        if (not 0 <= cached < N or (cached and plan.sparse and cached < plan.split)
                or (cached and plan.sparse_decode and not (plan.compact and cached >= plan.split))):
            raise ValueError(f"cannot resume a prefill of {N} tokens (split {plan.split}) at position {cached}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.model, self.pool, self.kv, self.plan, self.cached = model, pool, kv, plan, cached
        self.should_abort, self.chunk_tokens, self.on_progress = should_abort, chunk_tokens, on_progress
        self.max_pairs = 8 * chunk_tokens * chunk_tokens
        self.progress = 0.0  # fraction of the layers done
        self.units = 0  # units of work run so far
        self.logits: Tensor | None = None
        self._tails: dict[tuple[int, int], CachedTail] = {}  # paged tail attention per query range, all layers
        lh = lighthouse_config(model)
        self._after_select = lh is not None and lh.rope == "after_select"  # the op rotates after selection
        # layer -> the tail's K for the sparse-decode context, when the op's frequencies are not the cache's
        self._tail_keys: dict[int, Tensor] | None = (
            {} if self._after_select and plan.sparse_decode and lh.rope_freqs == "unscaled" else None)
        self._work = self._layers()

    @property
    def done(self) -> bool:
        return self.logits is not None

    def run(self, budget_s: float | None = None) -> Tensor | None:
        """Run units of work until the prefill is done: the last position's logits (V,) float32. With `budget_s`,
        stop early, before a unit that would likely end past the budget (the last unit's time predicts the next;
        at least one unit runs), and return None: call again to go on. Raises PrefillAborted between units once
        `should_abort()` holds."""
        cuda = self.pool.k.is_cuda
        t0 = last = time.perf_counter()
        for _ in self._work:
            self.units += 1
            if self.should_abort():
                raise PrefillAborted
            if budget_s is not None and not self.done:
                if cuda:
                    torch.cuda.synchronize(self.pool.k.device)  # the device's time, not the launches'
                now = time.perf_counter()
                unit, last = now - last, now
                if now - t0 + unit > budget_s:
                    return None
        return self.logits

    # ---- the layers ------------------------------------------------------------------------------------------
    def _segments(self, layer: int, last: bool) -> list[_Segment]:
        plan, N, s0 = self.plan, self.N, self.cached
        if plan.sparse and not s0:
            segs = [_Segment(0, plan.split, "op" if layer in plan.lighthouse_layers else "causal")]
            if plan.split < N:
                segs.append(_Segment(plan.split, N, "causal"))
        else:
            segs = [_Segment(s0, N, "causal")]
        if not last:
            return segs
        # only position N - 1 feeds the logits; the op still runs where it yields N - 1 or keeps the context
        keep = []
        for seg in segs:
            if seg.kind == "op" and (seg.end == N or plan.sparse_decode):
                keep.append(seg)
            elif seg.kind == "causal" and seg.end == N:
                keep.append(_Segment(N - 1, N, "causal"))
        return keep

    def _layers(self) -> Iterator[None]:
        model, pool, kv, plan = self.model, self.pool, self.kv, self.plan
        c = model.config
        N, s0, T = self.N, self.cached, self.chunk_tokens
        n = N - s0
        dev = pool.k.device
        layers = model.model.layers
        H, H_kv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        r = H // H_kv
        m = max(1, round(n / T))  # token chunks of about T (a prompt of 2^k + a short tail stays one chunk)
        size = -(-n // m)
        chunks = [(a, min(a + size, N)) for a in range(s0, N, size)]  # absolute positions
        with torch.no_grad():
            h = model.model.embed_tokens(self.prompt[None, s0:].to(dev))  # (1, n, hidden): positions [s0, N)
            dtype = h.dtype
            buffers = None
            rope: list[tuple[Tensor, Tensor]] = []
            if len(chunks) > 1:  # q, k, v of every position, filled chunk by chunk, token-major
                buffers = tuple(torch.empty(1, n, heads, D, dtype=dtype, device=dev) for heads in (H, H_kv, H_kv))
        yield
        after_select = self._after_select
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            attn = layer.self_attn
            segments = self._segments(i, last)
            in_context = not kv.full_table(i)  # a compact follow-up's Lighthouse layer: its context takes the K/V
            if in_context:
                e0 = plan.selected + s0 - plan.split  # position t is context entry S + t - split
                slots = pool.slots(kv.ctx_blocks[i], e0 * r, (e0 + n) * r)
            else:
                slots = pool.slots(kv.full_table(i), s0, N)
            # rope after selection: q/k stay un-rotated for the op, rotated in place before dense attention
            unrotated = after_select and any(seg.kind == "op" for seg in segments)
            with torch.no_grad():  # projections, RoPE and the cache write of positions [s0, N)
                for j, (a, b) in enumerate(chunks):
                    x = layer.input_layernorm(h[:, a - s0 : b - s0])
                    q, k, v = attn._qkv(x)
                    q = q.view(1, b - a, H, D).transpose(1, 2)
                    k = k.view(1, b - a, H_kv, D).transpose(1, 2)
                    v = v.view(1, b - a, H_kv, D).transpose(1, 2)
                    if len(rope) == j:  # cos/sin of each chunk's positions: made once, used by every layer
                        rope.append(rope_cos_sin(model.inv_freq, torch.arange(a, b, device=dev)[None], dtype))
                    cos, sin = rope[j]
                    if unrotated:  # the cache still gets K rotated (dense tail, dense decode)
                        k_cache = rope_qk(q, k, cos, sin, v.dtype)[1]
                        if buffers is not None:
                            qb, kb, vb = (buf[:, a - s0 : b - s0].transpose(1, 2) for buf in buffers)
                            q, k, v = qb.copy_(q), kb.copy_(k), vb.copy_(v)
                    elif buffers is None:
                        q, k = rope_qk(q, k, cos, sin, v.dtype)
                        k_cache = k
                    else:
                        qb, kb, vb = (buf[:, a - s0 : b - s0].transpose(1, 2) for buf in buffers)
                        q, k = rope_qk(q, k, cos, sin, v.dtype, out=(qb, kb))
                        k_cache, v = k, vb.copy_(v)
                    if in_context:
                        pool.write(slots[(a - s0) * r : (b - s0) * r], repeat_to_slots(k_cache[0].transpose(0, 1), r),
                                   repeat_to_slots(v[0].transpose(0, 1), r))
                    else:
                        pool.write(slots[a - s0 : b - s0], k_cache[0].transpose(0, 1), v[0].transpose(0, 1))
                if buffers is not None:
                    q, k, v = (buf.transpose(1, 2) for buf in buffers)  # (1, heads, n, D) views
            yield
            outs: list[tuple[int, int, Tensor]] = []  # (start, end, (1, H, end - start, D)) attention outputs
            for seg in segments:
                if unrotated and seg.kind == "causal":  # the op has run: rotate q/k in place, chunk by chunk
                    if self._tail_keys is not None:  # first the tail's K as the op rotates (rope_freqs "unscaled")
                        self._tail_keys[i] = self._tail_key(k)
                    with torch.no_grad():
                        for j, (a, b) in enumerate(chunks):
                            qc, kc = q[:, :, a - s0 : b - s0], k[:, :, a - s0 : b - s0]
                            rope_qk(qc, kc, *rope[j], v.dtype, out=(qc, kc))
                    unrotated = False
                for a, b, out in self._attention(i, seg, q, k, v):
                    outs.append((a, b, out))
                    yield
            q = k = v = None  # the buffers stay for the next layer
            if plan.sparse_decode and not s0 and i in plan.lighthouse_layers:  # before a compact scratch is reused
                with torch.no_grad():
                    keys = self._tail_keys.pop(i, None) if self._tail_keys is not None else None
                    append_tail_to_context(pool, kv, i, plan.selected, plan.split, N, keys)
            with torch.no_grad():  # o_proj and the MLP, in token chunks (the last layer: position N - 1 alone)
                for a, b, out in outs:
                    lo = N - 1 if last else a
                    for x0 in range(max(a, lo), b, T):
                        x1 = min(x0 + T, b)
                        rows = out[:, :, x0 - a : x1 - a].transpose(1, 2).reshape(1, x1 - x0, H * D)
                        hv = h[:, x0 - s0 : x1 - s0]
                        hv += attn.o_proj(rows)
                        hv += layer.mlp(layer.post_attention_layernorm(hv))
            outs = []
            self.progress = (i + 1) / len(layers)
            if self.on_progress is not None:
                self.on_progress(self.progress)
            yield
        with torch.no_grad():
            self.logits = model.lm_head(model.model.norm(h[:, -1:]))[0, -1].float()
        kv.length = N
        if plan.sparse_decode:
            kv.ctx_len = plan.selected + N - plan.split
        yield

    def _tail_key(self, k: Tensor) -> Tensor:
        """k (1, H_kv, N, D) un-rotated (s0 == 0) -> (N - split, H_kv, D): the tail's K rotated at its positions with
        `lighthouse_inv_freq`, as the op rotates a token and sparse decode its keys."""
        split = self.plan.split
        with torch.no_grad():
            pos = torch.arange(split, self.N, device=k.device)[None]
            cos, sin = rope_cos_sin(self.model.lighthouse_inv_freq, pos, k.dtype)
            return apply_rope(k[:, :, split:], cos, sin)[0].transpose(0, 1)

    def _attention(self, i: int, seg: _Segment, q: Tensor, k: Tensor, v: Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """Layer i's attention output for the queries of `seg`, one unit of work at a time."""
        plan, pool, kv, s0 = self.plan, self.pool, self.kv, self.cached
        if seg.kind == "op":  # s0 == 0 here: the buffers hold positions [0, N)
            lh = lighthouse_config(self.model)
            kw = dict(levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk, scorer=lh.scorer)
            if self._after_select:  # q/k un-rotated here; the op rotates what it selects (positions from 0)
                kw.update(rope="after_select", inv_freq=self.model.lighthouse_inv_freq)
            e = seg.end
            with torch.no_grad():
                if plan.sparse_decode:
                    out, k_sel, v_sel, idx = lighthouse_attention_with_context(q[:, :, :e], k[:, :, :e], v[:, :, :e], **kw)
                    keep_context(pool, kv, i, k_sel, v_sel, real_entries(idx, e, lh.levels, lh.pooling_factor, lh.topk))
                else:
                    out = lighthouse_attention(q[:, :, :e], k[:, :, :e], v[:, :, :e], **kw)
            yield 0, e, out
            return
        if not kv.full_table(i):  # a compact follow-up's Lighthouse layer: against the context, as decode reads it
            with torch.no_grad():
                out = context_attention(pool, kv, i, q[:, :, seg.start - s0 : seg.end - s0],
                                        plan.selected + seg.start - plan.split)
            yield seg.start, seg.end, out
            return
        if pool.k.is_cuda and seg.end - seg.start <= CachedTail.MAX_QUERIES and seg.start > 0:
            key = (seg.start, seg.end)
            tail = self._tails.get(key) or self._tails.setdefault(key, CachedTail.make(pool, *key))
            table = CachedTail.table_of(pool, kv.full_table(i))
            with torch.no_grad():  # never yield inside it: a suspended generator would leave grad mode off
                out = tail.attention(q[:, :, seg.start - s0 : seg.end - s0], pool.k, pool.v, table)
            yield seg.start, seg.end, out
            return
        keys = None
        if s0:  # a prefix-cache hit: keys [0, s0) are only in the cache
            keys = pool.read(kv.full_table(i), seg.end)
        for c0, c1 in query_chunks(seg.start, seg.end, self.max_pairs):
            with torch.no_grad():
                kc, vc = (keys[0][:, :, :c1], keys[1][:, :, :c1]) if keys else (k[:, :, :c1], v[:, :, :c1])
                out = attention_with_cache(q[:, :, c0 - s0 : c1 - s0], kc, vc)
            yield c0, c1, out
