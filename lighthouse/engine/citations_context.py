"""Citations over a compact document: what its Lighthouse layers kept, read as the engine's compact follow-up reads it.

A compact document keeps no full K/V in its Lighthouse layers, only their sparse-decode context (spec.py): per query
head the S entries the op selected for the head [0, split) (pooled K/V of windows of the pyramid; `[hole_start[h],
S)` are padding), then the positions [split, P) at full resolution (one entry each, every head of its group). A
question after it attends that context as sparse decode does (prefill_attention.py `context_attention`): the tail's
queries see the context's entries and, causally, the tail's own keys. The citation forward does the same here, per
head in float32, so its outputs are the engine's (up to summation order), and it also takes each query's softmax
weight on every context entry. An entry's weight is spread evenly over the positions of its window (`ctx_spans`:
a level-l entry pooled p**l positions; the part past the head, the op's zero padding, gets none), a full-resolution
entry's goes to its own position: (H, P) per layer, as a full document's layers give, for the same excess.

Memory: the layer's context K/V per query head (H, S + P - split, D) and one key chunk's logits for the tail's
queries at a time (two passes: the log-sum-exp, then the weights and outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.engine.cache.prefix_cache import CacheEntry


@dataclass
class DocumentContext:
    """A compact document's Lighthouse layers (a compact prefix-cache entry's): per layer its context table
    (entries [0, selected + P - split)), and what the entries are."""

    tables: list[list[int]]  # per layer: the context table ([] in a full-attention layer)
    selected: int  # S: the head's selected entries per query head
    split: int  # the head [0, split) was selected from; positions [split, P) follow at full resolution
    hole_start: Tensor  # (L, H) int32: layer i's entries [hole_start[i, h], S) are padding
    spans: Tensor  # (L, H, S, 2) int32: entry e of head h in layer i pools positions [start, start + length)

    @staticmethod
    def of(entry: "CacheEntry") -> "DocumentContext":
        assert entry.ctx_blocks is not None and entry.ctx_hole_start is not None and entry.ctx_spans is not None
        return DocumentContext(entry.ctx_blocks, entry.selected, entry.split, entry.ctx_hole_start, entry.ctx_spans)

    def entries(self, P: int) -> int:
        """E: context entries per query head of a document of P positions."""
        return self.selected + P - self.split


def read_context(pool: "KVPool", ctx: DocumentContext, layer: int, P: int) -> tuple[Tensor, Tensor, Tensor]:
    """Layer `layer`'s context as K and V per query head, (H, E, D) each in the model's dtype, and (H, E) bool: the
    entries attended (all but each head's padding)."""
    E, r = ctx.entries(P), pool.shape.group
    k, v = pool.gather(pool.slots(ctx.tables[layer], 0, E * r))  # (E*r, H_kv, D): entry e of head g*r + j at e*r + j
    H_kv, D = k.shape[1:]
    k, v = (x.view(E, r, H_kv, D).permute(2, 1, 0, 3).reshape(H_kv * r, E, D) for x in (k, v))
    e = torch.arange(E, device=k.device)
    hole = ctx.hole_start[layer].to(k.device).long()[:, None]  # (H, 1)
    return k, v, (e < hole) | (e >= ctx.selected)


def spread(weights: Tensor, ctx: DocumentContext, layer: int, P: int) -> Tensor:
    """weights (H, E) float32 on layer `layer`'s context entries -> (H, P) float32 on the document's positions: a
    selected entry's weight spread evenly over its window's positions in the head [0, split), a full-resolution
    entry's on its position. The total is kept (padding entries carry no weight: they are never attended)."""
    H, S, split = weights.shape[0], ctx.selected, ctx.split
    spans = ctx.spans[layer].to(weights.device).long()  # (H, S, 2)
    start = spans[..., 0].clamp(max=split)
    end = (spans[..., 0] + spans[..., 1]).clamp(max=split)
    real = end > start
    w = torch.where(real, weights[:, :S].double() / (end - start).clamp(min=1), 0.0)  # per position of the window
    diff = torch.zeros(H, P + 1, dtype=torch.float64, device=weights.device)  # +w at the start, -w past the end
    diff.scatter_add_(1, start, w).scatter_add_(1, end, -w)
    out = diff.cumsum(dim=1)[:, :P].float()
    out[:, split:P] += weights[:, S:]
    return out


def context_attention_weights(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, queries: tuple[int, int, int],
                              key_chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Attention of the tail's T queries over a context of E entries and the tail's own keys, with the weights on
    the context.

    q (H, T, D): the tail's queries (the document's positions P .. P + T - 1); k, v (H, E + T, D): the context's
    entries, then the tail's keys (query t attends context entries where `valid` (H, E) and tail keys [0, t]);
    queries (b, s, e): the baseline's queries are [b, s), the answer's [s, e), as indices into the tail.
    Returns out (H, T, D) float32, and the mean softmax weight on each context entry (H, E) float32 of the
    answer's queries and of the baseline's (zeros when there are none)."""
    H, T, D = q.shape
    E = valid.shape[1]
    M, scale = k.shape[1], 1.0 / math.sqrt(D)
    q, k, v = q.float(), k.float(), v.float()
    t = torch.arange(T, device=q.device)[None, :, None]
    attended = torch.cat([valid, valid.new_ones(H, T)], dim=1)  # (H, M): the tail's keys, causally (below)

    def logits(c0: int, c1: int) -> Tensor:  # (H, T, c): masked where not attended
        x = torch.einsum("htd,hcd->htc", q, k[:, c0:c1]) * scale
        m = torch.arange(c0, c1, device=q.device)
        ok = (m[None, None, :] - E <= t) & attended[:, None, c0:c1]
        return x.masked_fill(~ok, -math.inf)

    lse = torch.full((H, T), -math.inf, device=q.device)
    for c0 in range(0, M, key_chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(logits(c0, min(c0 + key_chunk, M)), dim=-1))
    b, s, e = queries
    out = torch.zeros(H, T, D, device=q.device)
    answer = torch.zeros(H, E, device=q.device)
    baseline = torch.zeros_like(answer)
    for c0 in range(0, M, key_chunk):
        c1 = min(c0 + key_chunk, M)
        w = torch.exp(logits(c0, c1) - lse[..., None])  # (H, T, c)
        out += torch.einsum("htc,hcd->htd", w, v[:, c0:c1])
        if c0 < E:
            n = min(c1, E) - c0
            if e > s:
                answer[:, c0 : c0 + n] = w[:, s:e, :n].mean(dim=1)
            if s > b:
                baseline[:, c0 : c0 + n] = w[:, b:s, :n].mean(dim=1)
    return out, answer, baseline
