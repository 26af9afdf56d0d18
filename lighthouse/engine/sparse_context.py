"""The prompt's Lighthouse-selected sub-sequence, kept per Lighthouse layer for sparse decode.

A decode token comes after every prompt entry in the op's causal order, so under Lighthouse it would attend to
the whole selected sub-sequence of the prompt: every coarsest entry plus the p children of each refined parent
per finer level (S = N/p^(L-1) + (L-1)*p*k entries per query head). The sparse prefill's own op call returns
those entries' pooled K and V (`lighthouse_attention_with_context`): nothing is selected or pooled twice.
With lighthouse.rope == "after_select" that K is rotated at each window's last position, as the op's own queries
saw it; the decode query (and the tail's K) carry RoPE at their own positions, which is what a token (a level-0
entry) gets under that variant too, with the op's frequencies: standard RoPE, or with lighthouse.rope_freqs ==
"unscaled" rope_theta's unscaled ones (the prefill rotates the tail's K so, the decode step its query and key).

Where the prompt length is not a multiple of the op's length unit, the op pads with zeros; entries that cover
only padding are not attended at decode. Attention over a set is order-free, so each head's entries are
reordered to put its real ones first; the rest form a per-head hole [n_real[h], S) the decode kernel skips.
A compact sequence also keeps each entry's window (`entry_spans`, in the stored order): citations spread an
entry's attention over the positions it pooled (citations_context.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.ops import level_offsets, padded_len, selected_length


def selected_entries(n: int, levels: int, pooling_factor: int, topk: int) -> int:
    """S, the selected sub-sequence length for a prompt of n positions (after the op's padding)."""
    return selected_length(padded_len(n, levels, pooling_factor, topk), levels, pooling_factor, topk)


def entry_spans(indices: Tensor, n: int, levels: int, pooling_factor: int, topk: int) -> Tensor:
    """indices (B, H, S) pyramid indices of a prompt of n positions -> (B, H, S, 2) int32: each entry's window as
    (start, length): a level-l entry covers positions [start, start + pooling_factor**l) (those past n, if any, are
    the op's zero padding)."""
    offsets = level_offsets(padded_len(n, levels, pooling_factor, topk), levels, pooling_factor)
    start, length = torch.zeros_like(indices), torch.ones_like(indices)
    for level in range(levels):  # later levels overwrite: offsets ascend
        inside = indices >= offsets[level]
        start = torch.where(inside, (indices - offsets[level]) * pooling_factor**level, start)
        length = torch.where(inside, torch.full_like(indices, pooling_factor**level), length)
    return torch.stack([start, length], dim=-1).to(torch.int32)


def context_order(real: Tensor) -> Tensor:
    """real (1, H, S) -> (H, S) int64: per head, the entries' order with the real ones first (in their order)."""
    return torch.argsort((~real[0]).to(torch.int8), dim=-1, stable=True)


@torch.no_grad()
def order_context(k_sel: Tensor, v_sel: Tensor, real: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """k_sel, v_sel (1, H, S, D) and real (1, H, S) -> the same entries with each head's real ones first (in their
    order), and (H,) int32 counts of real entries (the hole starts)."""
    idx = context_order(real)[None, :, :, None].expand_as(k_sel)
    return k_sel.gather(2, idx), v_sel.gather(2, idx), real[0].sum(-1).to(torch.int32)


def to_slots(x: Tensor, num_kv_heads: int) -> Tensor:
    """(1, H, E, D) per-query-head entries -> (E*r, H_kv, D) rows in slot order: entry e of head g*r + j at
    row e*r + j, KV head g (the layout `kv_cache` describes)."""
    _, H, E, D = x.shape
    r = H // num_kv_heads
    return x[0].view(num_kv_heads, r, E, D).permute(2, 1, 0, 3).reshape(E * r, num_kv_heads, D)


def repeat_to_slots(x: Tensor, r: int) -> Tensor:
    """(n, H_kv, D) positions -> (n*r, H_kv, D): each position as an entry of all r heads of its group."""
    n, H_kv, D = x.shape
    return x[:, None].expand(n, r, H_kv, D).reshape(n * r, H_kv, D)
