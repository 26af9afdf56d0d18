"""The attention pieces of a prefill: query chunks of dense causal attention, the paged tail, the sparse context.

Dense causal attention of a long prompt runs in query chunks: queries [c0, c1) need only keys [0, c1), so each
chunk is exact on its own (`attention_with_cache`, bottom-right causal) and a chunk is a unit of work the
scheduler can put decode steps between. Chunk boundaries spread the work (key-query pairs) evenly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lighthouse.engine.cache.pool import padded_tables
from lighthouse.engine.sparse_context import context_order, repeat_to_slots, to_slots
from lighthouse.ops.paged_attention import paged_decode_attention

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.engine.cache.sequence_kv import SequenceKV


def query_chunks(start: int, end: int, max_pairs: int, align: int = 128) -> list[tuple[int, int]]:
    """Split queries [start, end) of causal attention (query t sees keys [0, t]) into chunks of about equal work,
    each at most ~max_pairs key-query pairs (one chunk may exceed it when a single aligned row block does).
    Boundaries are multiples of `align` (but the ends)."""
    if end <= start:
        return []
    pairs = (end * end - start * start) / 2
    m = max(1, math.ceil(pairs / max(1, max_pairs)))
    bounds = [start]
    for j in range(1, m):
        b = int(math.sqrt(start * start + j / m * (end * end - start * start))) // align * align
        if bounds[-1] < b < end:
            bounds.append(b)
    bounds.append(end)
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class CachedTail:
    """Causal attention of the queries at positions [start, N) against a table's entries [0, N).

    On CUDA (`paged`) it runs the paged decode kernel over the table itself, no copy of the cache: the query of
    position t becomes one more query head of its KV group, and a per-head hole [t + 1, N) masks the positions
    after it (bottom-right causal alignment). Elsewhere the caller reads the cache out and uses dense attention."""

    paged: bool
    start: int
    n: int
    _row_args: dict = field(default_factory=dict)  # (chunk, H_kv, r) -> the kernel's per-row tensors: the same in every layer

    MAX_QUERIES = 256  # longer tails use dense attention over the read-out cache
    ROWS = 64  # queries x group heads per kernel call

    @staticmethod
    def make(pool: "KVPool", start: int, n: int) -> "CachedTail":
        return CachedTail(pool.k.is_cuda and n - start <= CachedTail.MAX_QUERIES, start, n)

    @staticmethod
    def table_of(pool: "KVPool", blocks: list[int]) -> Tensor:
        """One layer's table as the kernel takes it: (1, blocks) int32 on the pool's device."""
        return padded_tables([blocks]).to(pool.k.device)

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

    def attention(self, q: Tensor, k_cache: Tensor, v_cache: Tensor, table: Tensor) -> Tensor:
        """q (1, H, n - start, D) against one layer's table (`table_of`) in the pool (k_cache, v_cache)."""
        _, H, Nq, D = q.shape
        H_kv = k_cache.shape[2]
        r = H // H_kv
        outs = []
        step = max(1, self.ROWS // r)
        for c0 in range(0, Nq, step):
            n = min(step, Nq - c0)
            qc = q[0, :, c0 : c0 + n].reshape(H_kv, r, n, D).transpose(1, 2).reshape(1, H_kv * n * r, D)
            full, per_head, hole = self._rows(c0, n, H_kv, r, q.device)
            o = paged_decode_attention(qc, k_cache, v_cache, table, full, per_head, hole, full)
            outs.append(o.view(H_kv, n, r, D).transpose(1, 2).reshape(H, n, D))
        return torch.cat(outs, dim=1)[None]


def keep_context(pool: "KVPool", kv: "SequenceKV", i: int, k_sel: Tensor, v_sel: Tensor, spans: Tensor, n: int) -> None:
    """Layer i's selected (1, H, S, D) K/V, real entries first per head, at its context entries [0, S); spans
    (1, H, S, 2) int32: their windows (`entry_spans` of a prompt head of n positions), kept in the same order on the
    CPU by a compact sequence (`SequenceKV.ctx_spans`, for citations)."""
    real = spans[..., 0] < n  # (1, H, S): the window holds a real position
    order = context_order(real)  # (H, S)
    k_sel, v_sel = (x.gather(2, order[None, :, :, None].expand_as(x)) for x in (k_sel, v_sel))
    H_kv = pool.shape.num_kv_heads
    S = k_sel.shape[2]
    pool.write(pool.slots(kv.ctx_blocks[i], 0, S * pool.shape.group), to_slots(k_sel, H_kv), to_slots(v_sel, H_kv))
    assert kv.ctx_hole_start is not None
    kv.ctx_hole_start[i] = real[0].sum(-1).to(device=kv.ctx_hole_start.device, dtype=torch.int32)
    kv.ctx_hole_end = S
    if kv.compact:
        if kv.ctx_spans is None or kv.ctx_spans.shape[2] != S:  # pinned: the copy below does not sync the device
            kv.ctx_spans = torch.zeros(len(kv.blocks), *spans.shape[1:], dtype=torch.int32, pin_memory=spans.is_cuda)
        # read only after the prefill's end (citations, the host and disk tiers), which syncs before its first token
        kv.ctx_spans[i].copy_(spans[0].gather(1, order[..., None].expand(-1, -1, 2)), non_blocking=True)


def append_tail_to_context(pool: "KVPool", kv: "SequenceKV", i: int, selected: int, split: int, n: int,
                           keys: Tensor | None = None) -> None:
    """Layer i's positions [split, n) join its context at full resolution, as entries of every head of their group
    (read from the layer's full table: in a compact sequence, the scratch, before the next layer reuses it).
    keys: (n - split, H_kv, D) K rows to use instead of the cache's (rotated with other frequencies)."""
    S, r = selected, pool.shape.group
    k, v = pool.gather(pool.slots(kv.full_table(i), split, n))
    if keys is not None:
        k = keys
    dst = pool.slots(kv.ctx_blocks[i], S * r, (S + n - split) * r)
    pool.write(dst, repeat_to_slots(k, r), repeat_to_slots(v, r))


def context_attention(pool: "KVPool", kv: "SequenceKV", i: int, q: Tensor, first_entry: int) -> Tensor:
    """q (1, H, m, D): queries whose K/V are context entries [first_entry, first_entry + m) of layer i (written),
    each attending to the context up to its own entry, as a sparse decode step would: (1, H, m, D). On CUDA one row
    of the paged decode kernel per query, all reading the layer's context table; elsewhere one row of m queries."""
    _, H, m, D = q.shape
    dev = q.device
    i32 = torch.int32
    assert kv.ctx_hole_start is not None
    if not q.is_cuda:  # off CUDA: one row of m queries, causal among them (its pages gathered once, not m times)
        out = paged_decode_attention(q, pool.k, pool.v, torch.tensor([kv.ctx_blocks[i]], dtype=i32, device=dev),
                                     torch.tensor([first_entry + m], dtype=i32, device=dev),
                                     torch.ones(1, dtype=i32, device=dev), kv.ctx_hole_start[i].to(dev)[None],
                                     torch.full((1,), kv.ctx_hole_end, dtype=i32, device=dev))
        return out
    table = torch.tensor([kv.ctx_blocks[i]], dtype=i32, device=dev).expand(m, -1).contiguous()
    lens = torch.arange(first_entry + 1, first_entry + m + 1, dtype=i32, device=dev)
    per_head = torch.ones(m, dtype=i32, device=dev)
    hole_start = kv.ctx_hole_start[i].to(dev)[None].expand(m, -1).contiguous()
    hole_end = torch.full((m,), kv.ctx_hole_end, dtype=i32, device=dev)
    out = paged_decode_attention(q[0].transpose(0, 1).contiguous(), pool.k, pool.v, table, lens, per_head, hole_start,
                                 hole_end)
    return out.transpose(0, 1)[None]
