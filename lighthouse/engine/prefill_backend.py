"""The attention backend of one prompt's prefill: what the model's chunked forward (model/chunked.py) asks of the
engine in each layer. `project` rotates q/k as the plan says and writes K/V to the sequence's tables; `attend`
runs the layer's attention pieces over them, one unit of work at a time.

Per layer, the pieces of positions [s0, N) (s0: what a prefix-cache hit gave):
- sparse plan, no hit: "op" over [0, split) in a Lighthouse layer (else "causal"), then "causal" over [split, N)
  (the dense tail) against the whole cache;
- otherwise: "causal" over [s0, N).
A "causal" piece runs as the paged tail (CUDA, short), against a compact layer's context (as decode reads it), or in
query chunks of dense attention (prefill_attention.py). In the model's last layer only what position N - 1 needs runs
(and the op where it keeps the sparse-decode context).

RoPE (`plan.layer_attention`): the cache always gets K rotated as usual. A layer whose op rotates after selection
keeps q/k un-rotated until the op has run, then rotates them in place before its dense tail; with unscaled
frequencies the tail's K joins the sparse-decode context rotated with `lighthouse_inv_freq` (from the un-rotated K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from lighthouse.engine.cache.pool import padded_tables
from lighthouse.engine.plan import PrefillPlan, layer_attention, usable_lighthouse
from lighthouse.engine.prefill_attention import (CachedTail, append_tail_to_context, context_attention, keep_context,
                                                 query_chunks)
from lighthouse.engine.sparse_context import entry_spans, repeat_to_slots
from lighthouse.ops import lighthouse_attention, lighthouse_attention_with_context
from lighthouse.ops.attention import attention_with_cache
from lighthouse.ops.fused import rope_qk
from lighthouse.ops.rope import apply_rope, rope_cos_sin

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.engine.cache.sequence_kv import SequenceKV
    from lighthouse.model.llama import LlamaForCausalLM


@dataclass
class _Piece:
    """Queries [start, end) of one layer's attention: "op" (the Lighthouse op over [0, end), start 0) or "causal"
    (query t attends to keys [0, t])."""

    start: int
    end: int
    kind: str


class PrefillBackend:
    """Attention and KV writes of one prefill of positions [cached, N) into `kv` (see the module docstring)."""

    def __init__(self, model: "LlamaForCausalLM", pool: "KVPool", kv: "SequenceKV", plan: PrefillPlan, N: int,
                 cached: int, chunk_tokens: int, multi_chunk: bool):
        self.model, self.pool, self.kv, self.plan, self.N, self.s0 = model, pool, kv, plan, N, cached
        c = model.config
        self.H, self.H_kv, self.D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.r = self.H // self.H_kv
        self.max_pairs = 8 * chunk_tokens * chunk_tokens
        self.lh = usable_lighthouse(c)
        self._rope: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}  # cos/sin per chunk, made once for all layers
        self._tails: dict[tuple[int, int], CachedTail] = {}  # paged tail attention per query range, all layers
        self._tail_tables: dict[int, Tensor] | None = None  # layer -> its full table on the device, (1, W) int32
        self._multi_chunk = multi_chunk  # q/k/v of every position go to buffers, chunk by chunk (token-major)
        self._buffers: tuple[Tensor, Tensor, Tensor] | None = None
        self._qkv: tuple[Tensor, Tensor, Tensor] | None = None  # this layer's (1, heads, n, D)
        self._chunks: list[tuple[int, int]] = []
        self._unrotated = False  # this layer's q/k await the op's rotation
        self._slots: Tensor | None = None  # this layer's cache slots of positions [s0, N)

    # ---- the plan of a layer ---------------------------------------------------------------------------------
    def _pieces(self, layer: int, last: bool) -> list[_Piece]:
        plan, N, s0 = self.plan, self.N, self.s0
        if plan.sparse and not s0:
            pieces = [_Piece(0, plan.split, "op" if layer in plan.lighthouse_layers else "causal")]
            if plan.split < N:
                pieces.append(_Piece(plan.split, N, "causal"))
        else:
            pieces = [_Piece(s0, N, "causal")]
        if not last:
            return pieces
        # only position N - 1 feeds the logits; the op still runs where it yields N - 1 or keeps the context
        keep = []
        for p in pieces:
            if p.kind == "op" and (p.end == N or plan.sparse_decode):
                keep.append(p)
            elif p.kind == "causal" and p.end == N:
                keep.append(_Piece(N - 1, N, "causal"))
        return keep

    def _rotates_after_select(self, layer: int) -> bool:
        return (self.plan.sparse and not self.s0 and layer in self.plan.lighthouse_layers
                and layer_attention(self.model.config, layer, self.plan.split).rotates_after_select)

    # ---- project: RoPE and the cache write of one chunk ------------------------------------------------------
    def project(self, layer: int, a: int, b: int, q: Tensor, k: Tensor, v: Tensor) -> None:
        pool, kv, s0, r = self.pool, self.kv, self.s0, self.r
        if a == s0:  # the layer's first chunk
            self._chunks, self._unrotated = [], self._rotates_after_select(layer)
            if self._multi_chunk and self._buffers is None:
                n = self.N - s0
                self._buffers = tuple(torch.empty(1, n, heads, self.D, dtype=v.dtype, device=v.device)
                                      for heads in (self.H, self.H_kv, self.H_kv))
        self._chunks.append((a, b))
        if (a, b) not in self._rope:
            self._rope[a, b] = rope_cos_sin(self.model.inv_freq, torch.arange(a, b, device=v.device)[None], v.dtype)
        cos, sin = self._rope[a, b]
        buf = None if self._buffers is None else tuple(x[:, a - s0 : b - s0].transpose(1, 2) for x in self._buffers)
        if self._unrotated:  # the cache still gets K rotated (dense tail, dense decode)
            k_cache = rope_qk(q, k, cos, sin, v.dtype)[1]
            if buf is not None:
                q, k, v = buf[0].copy_(q), buf[1].copy_(k), buf[2].copy_(v)
        elif buf is None:
            q, k = rope_qk(q, k, cos, sin, v.dtype)
            k_cache = k
        else:
            q, k = rope_qk(q, k, cos, sin, v.dtype, out=(buf[0], buf[1]))
            k_cache, v = k, buf[2].copy_(v)
        in_context = not kv.full_table(layer)  # a compact follow-up's Lighthouse layer: its context takes the K/V
        if a == s0:  # the layer's slots for [s0, N) at once: one table upload per layer, sliced per chunk
            if in_context:
                e0 = self.plan.selected + s0 - self.plan.split  # position t is context entry S + t - split
                self._slots = pool.slots(kv.ctx_blocks[layer], e0 * r, (e0 + self.N - s0) * r)
            else:
                self._slots = pool.slots(kv.full_table(layer), s0, self.N)
        if in_context:
            pool.write(self._slots[(a - s0) * r : (b - s0) * r], repeat_to_slots(k_cache[0].transpose(0, 1), r),
                       repeat_to_slots(v[0].transpose(0, 1), r))
        else:
            pool.write(self._slots[a - s0 : b - s0], k_cache[0].transpose(0, 1), v[0].transpose(0, 1))
        if self._buffers is not None:
            self._qkv = tuple(x.transpose(1, 2) for x in self._buffers)  # (1, heads, n, D) views
        else:
            self._qkv = (q, k, v)

    # ---- attend: the layer's pieces, one unit of work at a time ----------------------------------------------
    def attend(self, layer: int, last: bool) -> Iterator[tuple[int, int, Tensor]]:
        plan, s0 = self.plan, self.s0
        q, k, v = self._qkv
        tail_keys = None
        for piece in self._pieces(layer, last):
            if self._unrotated and piece.kind == "causal":  # the op has run: rotate q/k in place, chunk by chunk
                if plan.sparse_decode and layer_attention(self.model.config, layer, plan.split).unscaled:
                    # first the tail's K as the op rotates it, for the context
                    tail_keys = self._tail_key(k)
                with torch.no_grad():
                    for a, b in self._chunks:
                        qc, kc = q[:, :, a - s0 : b - s0], k[:, :, a - s0 : b - s0]
                        rope_qk(qc, kc, *self._rope[a, b], v.dtype, out=(qc, kc))
                self._unrotated = False
            yield from self._attention(layer, piece, q, k, v)
        self._qkv = None  # the buffers stay for the next layer
        if plan.sparse_decode and not s0 and layer in plan.lighthouse_layers:  # before a compact scratch is reused
            with torch.no_grad():
                append_tail_to_context(self.pool, self.kv, layer, plan.selected, plan.split, self.N, tail_keys)

    def _tail_table(self, i: int) -> Tensor:
        """Layer i's full table as the paged kernel takes it; every layer's uploaded at the first call in one copy
        (a cached question's tail runs in every layer: one host-to-device copy, not one per layer)."""
        if self._tail_tables is None:
            full = [j for j in range(len(self.kv.blocks)) if self.kv.full_table(j)]
            rows = padded_tables([self.kv.full_table(j) for j in full]).to(self.pool.k.device)
            self._tail_tables = {j: rows[r : r + 1] for r, j in enumerate(full)}
        return self._tail_tables[i]

    def _tail_key(self, k: Tensor) -> Tensor:
        """k (1, H_kv, N, D) un-rotated (s0 == 0) -> (N - split, H_kv, D): the tail's K rotated at its positions with
        `lighthouse_inv_freq`, as the op rotates a token and sparse decode its keys."""
        split = self.plan.split
        with torch.no_grad():
            pos = torch.arange(split, self.N, device=k.device)[None]
            cos, sin = rope_cos_sin(self.model.lighthouse_inv_freq, pos, k.dtype)
            return apply_rope(k[:, :, split:], cos, sin)[0].transpose(0, 1)

    def _attention(self, i: int, p: _Piece, q: Tensor, k: Tensor, v: Tensor) -> Iterator[tuple[int, int, Tensor]]:
        """Layer i's attention output for the queries of piece `p`, one unit of work at a time."""
        plan, pool, kv, s0 = self.plan, self.pool, self.kv, self.s0
        if p.kind == "op":  # s0 == 0 here: q/k/v hold positions [0, N)
            lh, e = self.lh, p.end
            kw = dict(levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk, scorer=lh.scorer)
            if layer_attention(self.model.config, i, e).rotates_after_select:  # the op rotates what it selects
                kw.update(rope="after_select", inv_freq=self.model.lighthouse_inv_freq)
            with torch.no_grad():
                if plan.sparse_decode:
                    out, k_sel, v_sel, idx = lighthouse_attention_with_context(q[:, :, :e], k[:, :, :e], v[:, :, :e], **kw)
                    spans = entry_spans(idx, e, lh.levels, lh.pooling_factor, lh.topk)  # (1, H, S, 2)
                    keep_context(pool, kv, i, k_sel, v_sel, spans, e)
                else:
                    out = lighthouse_attention(q[:, :, :e], k[:, :, :e], v[:, :, :e], **kw)
            yield 0, e, out
            return
        if not kv.full_table(i):  # a compact follow-up's Lighthouse layer: against the context, as decode reads it
            with torch.no_grad():
                out = context_attention(pool, kv, i, q[:, :, p.start - s0 : p.end - s0],
                                        plan.selected + p.start - plan.split)
            yield p.start, p.end, out
            return
        if pool.k.is_cuda and p.end - p.start <= CachedTail.MAX_QUERIES and p.start > 0:
            key = (p.start, p.end)
            tail = self._tails.get(key) or self._tails.setdefault(key, CachedTail.make(pool, *key))
            table = self._tail_table(i)
            with torch.no_grad():  # never yield inside it: a suspended generator would leave grad mode off
                out = tail.attention(q[:, :, p.start - s0 : p.end - s0], pool.k, pool.v, table)
            yield p.start, p.end, out
            return
        keys = None
        if s0:  # a prefix-cache hit: keys [0, s0) are only in the cache
            keys = pool.read(kv.full_table(i), p.end)
        for c0, c1 in query_chunks(p.start, p.end, self.max_pairs):
            with torch.no_grad():
                kc, vc = (keys[0][:, :, :c1], keys[1][:, :, :c1]) if keys else (k[:, :, :c1], v[:, :, :c1])
                out = attention_with_cache(q[:, :, c0 - s0 : c1 - s0], kc, vc)
            yield c0, c1, out
