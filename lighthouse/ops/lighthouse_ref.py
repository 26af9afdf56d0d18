"""Lighthouse attention in pure PyTorch: the specification every fast path must match.

Pipeline (one call, every query present, as in a prompt's prefill or a training step):
  1. scores   s_q, s_k per position and head (norm: ||q||, ||k||; dilated: norms of strided causal attention)
  2. pyramid  level l holds means of Q, K, V over windows of c = p^l positions; scores are max-pooled
  3. select   per (batch, head, tile) a cascade from the coarsest level down: 64 entries by s_q plus 64 by s_k
              are refined into their p children; everything else stays coarse. Gradient-free.
  4. sort     entries are ordered by a key that makes plain causal attention over the gathered sequence causal
  5. attend   causal attention over the gathered sub-sequence (S entries)
  6. scatter  entry (level l, index i) adds its output to positions [i*c + c - 1, i*c + 2c - 1) (clipped to N);
              every position sums the outputs of up to L entries, one per level

Properties worth knowing (tests pin each one down):
  - S = N / p^(L-1) + (L-1) * p * topk exactly.
  - The value path is causal: V at positions >= t never changes outputs before t.
  - The selection is not: which windows are refined depends on scores across the whole tile, future tokens
    included. Prefill sees the whole prompt, so this is harmless there, but outputs at t < N can change when
    q/k (their norms) change at positions >= t inside the same tile.
  - Positions 0 .. p^(L-1) - 2 receive no coarsest-level output and can be exactly zero.
  - levels=1 is dense causal attention.

Where RoPE goes (`rope=`):
  - "before_pool" (the published code, the default): q/k come rotated; pooled entries are means of rotated rows.
  - "after_select" (the official repository's open change "Fix RoPE for pooled tokens in hierarchical
    selection"): q/k come un-rotated. Scores, pooling and selection run on the un-rotated q/k; then every gathered
    entry, query and key alike, is rotated at the last base position its window covers, (i+1)*p^l - 1 (plus
    `position_offset`), with the caller's inverse frequencies (the model passes its `lighthouse_inv_freq`: its
    standard RoPE frequencies, or rope_theta's unscaled ones as the official change computes them, per
    lighthouse.rope_freqs): a level-0 token at its own position, a pooled entry at its window's end. V is never
    rotated. The rotation runs in float32 and is cast back (HF's rotate_half convention; `rotate_at`). The causal
    order already sorts entries by that position, so each query sees keys at positions <= its own. Padded windows
    use the same rule on the padded length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lighthouse.ops.attention import causal_attention, repeat_kv
from lighthouse.ops.bitonic import bitonic_sort_desc
from lighthouse.ops.validation import (
    BATCH,
    DILATION,
    TILE_BUDGET,
    check_config,
    check_inputs,
    check_rope,
    pad_seq,
    padded_len,
)

SENTINEL = -1e6  # score of an empty lane (below every real score)
PAD_SCORE = -1.0  # score of a padded position (below every real norm, above SENTINEL)


# ----------------------------------------------------------------------------------------------- scores


def norm_scores(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """s_q = ||q_i||, s_k = ||k_i|| over D, in the activation dtype. (B, H, N, D) -> two (B, H, N)."""
    return q.norm(dim=-1), k.norm(dim=-1)


def dilated_scores(q: Tensor, k: Tensor, v: Tensor, dilation: int = DILATION) -> tuple[Tensor, Tensor]:
    """Norms of causal attention over `dilation` strided sub-sequences (positions r, r+dil, ...), q->k and k->q.

    Costs about 2/dilation of a dense pass. (B, H, N, D) -> two (B, H, N); N % dilation == 0.
    """
    B, H, N, D = q.shape
    n = N // dilation

    def split(x: Tensor) -> Tensor:  # (B, H, N, D) -> (B, dil*H, N/dil, D): one head per (residue, head)
        return x.view(B, H, n, dilation, D).permute(0, 3, 1, 2, 4).reshape(B, dilation * H, n, D)

    def merged_norm(o: Tensor) -> Tensor:  # (B, dil*H, N/dil, D) -> (B, H, N)
        return o.norm(dim=-1).view(B, dilation, H, n).permute(0, 2, 3, 1).reshape(B, H, N)

    qs, ks, vs = split(q), split(k), split(v)
    return merged_norm(causal_attention(qs, ks, vs)), merged_norm(causal_attention(ks, qs, vs))


# ---------------------------------------------------------------------------------------------- pyramid


def build_pyramid(x: Tensor, levels: int, pooling_factor: int) -> list[Tensor]:
    """[x, mean over windows of p, of p^2, ...]: level l is (B, H, N / p^l, D)."""
    B, H, N, D = x.shape
    out = [x]
    for level in range(1, levels):
        c = pooling_factor**level
        out.append(x.view(B, H, N // c, c, D).mean(3))
    return out


def max_pool_scores(s: Tensor, levels: int, pooling_factor: int) -> list[Tensor]:
    """Per-level scores as float32: level l is the max of level-0 scores over each window of p^l."""
    B, H, N = s.shape
    out = [s.float()]
    for level in range(1, levels):
        c = pooling_factor**level
        out.append(s.view(B, H, N // c, c).amax(-1).float())
    return out


def level_offsets(n: int, levels: int, pooling_factor: int) -> list[int]:
    """Start of each level in the concatenated pyramid [level 0 | level 1 | ...]."""
    offs, acc = [], 0
    for level in range(levels):
        offs.append(acc)
        acc += n // pooling_factor**level
    return offs


# --------------------------------------------------------------------------------- RoPE after selection


def entry_positions(indices: Tensor, n: int, levels: int, pooling_factor: int) -> Tensor:
    """Pyramid indices (any shape) of a sequence of length n (the padded length) -> the last base position each
    entry covers: (i+1) * p^l - 1 for window i of level l (a level-0 token: its own position). int64."""
    offsets = level_offsets(n, levels, pooling_factor)
    pos = indices.clone()
    for level in range(1, levels):  # later levels overwrite: offsets ascend
        c = pooling_factor**level
        pos = torch.where(indices >= offsets[level], (indices - offsets[level] + 1) * c - 1, pos)
    return pos


def rotate_at(x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """x (B, H, S, D) rotated by RoPE at positions (B, H, S) (HF's rotate_half convention), in float32 with
    angles positions * inv_freq (inv_freq (D/2,)), cast back to x's dtype. Differentiable in x."""
    ang = positions[..., None].float() * inv_freq.float().to(x.device)  # (B, H, S, D/2), as rope_cos_sin
    emb = torch.cat((ang, ang), dim=-1)
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * emb.cos() + torch.cat((-x2, x1), dim=-1) * emb.sin()).to(x.dtype)


def _offset(position_offset: int | Tensor, device: torch.device) -> int | Tensor:
    """position_offset as something that broadcasts against (B, H, S) positions."""
    if isinstance(position_offset, Tensor):
        return position_offset.to(device=device, dtype=torch.int64).view(-1, 1, 1)
    return position_offset


def rotate_selected(qs: Tensor, ks: Tensor, indices: Tensor, n: int, levels: int, pooling_factor: int,
                    inv_freq: Tensor, position_offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
    """rope="after_select": the gathered (B, H, S, D) q and k entries rotated at their windows' last positions."""
    pos = entry_positions(indices, n, levels, pooling_factor) + _offset(position_offset, qs.device)
    return rotate_at(qs, pos, inv_freq), rotate_at(ks, pos, inv_freq)


def rotate_base(q: Tensor, k: Tensor, inv_freq: Tensor, position_offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
    """rope="after_select" at levels=1 (every entry a token): q (B, H, N, D) and k (B, H_kv, N, D) rotated at
    their own positions."""
    B, _, N, _ = q.shape
    pos = torch.arange(N, device=q.device).expand(B, 1, N) + _offset(position_offset, q.device)
    return rotate_at(q, pos, inv_freq), rotate_at(k, pos, inv_freq)


# -------------------------------------------------------------------------------------------- selection


@dataclass
class Selection:
    """Which pyramid entries a call gathers, and in what order.

    indices: (B, H, S) int64 positions in the concatenated pyramid, in causal (key) order.
    order:   (B, H, S) int64 permutation from the level-grouped layout to `indices` order.
    local:   per level l (0 = base), (B, H, count_l) int64 level-local window indices in the grouped layout;
             the grouped layout is [level L-1 | level L-2 | ... | level 0].
    """

    indices: Tensor
    order: Tensor
    local: dict[int, Tensor]


def _stream_top(cand: Tensor, s_q: Tensor, s_k: Tensor, tiles: int) -> Tensor:
    """One level of the cascade for every (batch, head, tile) row.

    cand: (G, M) level-local candidate indices (-1 = empty), G = B*H*tiles, M a multiple of 64.
    s_q, s_k: (B, H, len) float32 level scores. Returns (G, 128): the s_q top-64 list then the s_k top-64
    list, each in the network's final order (that order fixes the next level's candidate order).
    """
    G, M = cand.shape
    length = s_q.shape[-1]
    sq_flat, sk_flat = s_q.reshape(-1), s_k.reshape(-1)
    row_base = (torch.arange(G, device=cand.device) // tiles * length)[:, None]

    def lookup(flat: Tensor, idx: Tensor) -> Tensor:
        vals = flat[row_base + idx.clamp(min=0)]
        return torch.where(idx >= 0, vals, torch.full_like(vals, SENTINEL))

    top_qs = torch.full((G, BATCH), SENTINEL, device=cand.device, dtype=torch.float32)
    top_qi = torch.full((G, BATCH), -1, device=cand.device, dtype=torch.int64)
    top_ks, top_ki = top_qs.clone(), top_qi.clone()
    for start in range(0, M, BATCH):
        new_i = cand[:, start : start + BATCH]
        s, i = bitonic_sort_desc(torch.cat([top_qs, lookup(sq_flat, new_i)], 1), torch.cat([top_qi, new_i], 1))
        top_qs, top_qi, rejected = s[:, :BATCH], i[:, :BATCH], i[:, BATCH:]
        s, i = bitonic_sort_desc(torch.cat([top_ks, lookup(sk_flat, rejected)], 1), torch.cat([top_ki, rejected], 1))
        top_ks, top_ki = s[:, :BATCH], i[:, :BATCH]
    return torch.cat([top_qi, top_ki], 1)


def _children(parents: Tensor, pooling_factor: int) -> Tensor:
    """(G, P) parent indices -> (G, P * p) child indices at the next finer level, parent-major (-1 stays -1)."""
    ch = parents[:, :, None] * pooling_factor + torch.arange(pooling_factor, device=parents.device)
    return torch.where(parents[:, :, None] >= 0, ch, -1).flatten(1)


def _refined_mask(refined: Tensor, bh: int, length: int) -> Tensor:
    """(G, 128) refined indices -> (BH, length) bool membership."""
    idx = refined.reshape(bh, -1)
    idx = torch.where(idx >= 0, idx, length)  # empty lanes land in a spare column
    mask = torch.zeros(bh, length + 1, dtype=torch.bool, device=refined.device)
    return mask.scatter_(1, idx, True)[:, :length]


@torch.no_grad()
def select(s_q: list[Tensor], s_k: list[Tensor], n: int, levels: int, pooling_factor: int, topk: int) -> Selection:
    """The top-k cascade and the causal sort. s_q/s_k: per-level float32 (B, H, len_l) scores; levels >= 2."""
    B, H = s_q[0].shape[:2]
    bh, tiles, p, top = B * H, topk // TILE_BUDGET, pooling_factor, levels - 1
    device = s_q[0].device
    coarse_len = n // p**top
    span = coarse_len // tiles

    cand = (torch.arange(tiles, device=device)[:, None] * span + torch.arange(span, device=device)).repeat(bh, 1)
    refined, emitted = {}, {}
    for level in range(top, 0, -1):
        if level < top:
            cand = _children(refined[level + 1], p)
            emitted[level] = cand.reshape(bh, -1)
        refined[level] = _stream_top(cand, s_q[level], s_k[level], tiles)
    emitted[0] = _children(refined[1], p).reshape(bh, -1)
    emitted[top] = torch.arange(coarse_len, device=device).expand(bh, coarse_len)

    offs = level_offsets(n, levels, p)
    keys, pyr = [], []
    for level in range(top, -1, -1):  # grouped layout: coarsest first
        i = emitted[level]
        c = p**level
        key = (i * c).double()
        if level > 0:
            is_refined = _refined_mask(refined[level], bh, n // c).gather(1, i)
            # a refined window sorts just before its end, after all of its descendants
            key = torch.where(is_refined, ((i + 1) * c).double() - 2.0**-level, key)
        keys.append(key)
        pyr.append(i + offs[level])
    keys, pyr = torch.cat(keys, 1), torch.cat(pyr, 1)
    order = torch.argsort(keys, dim=1)
    local = {lvl: emitted[lvl].reshape(B, H, -1) for lvl in emitted}
    return Selection(pyr.gather(1, order).view(B, H, -1), order.view(B, H, -1), local)


def selected_length(n: int, levels: int, pooling_factor: int, topk: int) -> int:
    """S = N / p^(L-1) + (L-1) * p * topk."""
    if levels == 1:
        return n
    return n // pooling_factor ** (levels - 1) + (levels - 1) * pooling_factor * topk


# ---------------------------------------------------------------------------------------------- scatter


def scatter_to_base(out_sel: Tensor, sel: Selection, n: int, levels: int, pooling_factor: int) -> Tensor:
    """Fan each entry's output out to the base positions it feeds, summing across levels (float32).

    out_sel: (B, H, S, D) attention outputs in `sel.indices` order. Returns (B, H, n, D) in float32 (float64 for float64 input).
    Deterministic: within one level no two entries write the same position.
    """
    B, H, S, D = out_sel.shape
    bh, top, p = B * H, levels - 1, pooling_factor
    inv = torch.empty_like(sel.order).scatter_(2, sel.order, torch.arange(S, device=out_sel.device).expand(B, H, S))
    acc_dtype = torch.promote_types(out_sel.dtype, torch.float32)  # sum in fp32 (fp64 stays fp64)
    grouped = out_sel.gather(2, inv[..., None].expand(B, H, S, D)).to(acc_dtype)

    # coarsest level: every window present, so position t >= c-1 takes window (t+1)//c - 1
    c = p**top
    coarse_len = n // c
    coarse = grouped[:, :, :coarse_len].repeat_interleave(c, dim=2)[:, :, : n - c + 1]
    acc = F.pad(coarse, (0, 0, c - 1, 0)).reshape(bh * n, D)
    acc = torch.cat([acc, acc.new_zeros(1, D)])  # spare row for writes past the end

    start = coarse_len
    row = (torch.arange(bh, device=out_sel.device) * n)[:, None, None]
    for level in range(top - 1, -1, -1):
        c = p**level
        i = sel.local[level].reshape(bh, -1)
        count = i.shape[1]
        vals = grouped[:, :, start : start + count].reshape(bh, count, 1, D).expand(bh, count, c, D)
        pos = i[:, :, None] * c + (c - 1) + torch.arange(c, device=i.device)
        flat = torch.where(pos < n, row + pos, bh * n)
        acc = torch.index_add(acc, 0, flat.reshape(-1), vals.reshape(-1, D))
        start += count
    return acc[: bh * n].view(B, H, n, D)


# ------------------------------------------------------------------------------------------------ the op


@torch.no_grad()
def _select_padded(
    q: Tensor, k: Tensor, v: Tensor, n_valid: int, levels: int, pooling_factor: int, topk: int, scorer: str
) -> Selection:
    """Score, mask padding (positions >= n_valid score below every real entry), and select."""
    s_q, s_k = norm_scores(q, k) if scorer == "norm" else dilated_scores(q, k, v)
    if n_valid < q.shape[2]:
        s_q[..., n_valid:] = PAD_SCORE
        s_k[..., n_valid:] = PAD_SCORE
    return select(
        max_pool_scores(s_q, levels, pooling_factor), max_pool_scores(s_k, levels, pooling_factor),
        q.shape[2], levels, pooling_factor, topk,
    )


def _lighthouse_padded(
    q: Tensor, k: Tensor, v: Tensor, n_valid: int, levels: int, pooling_factor: int, topk: int, scorer: str,
    rotary: tuple[Tensor, int | Tensor] | None = None,
) -> Tensor:
    """The op on a length that meets every constraint. Positions >= n_valid are padding: their scores are
    masked below every real score, so they never change which real windows are refined. Returns float32.
    rotary: None (rope="before_pool") or (inv_freq, position_offset) for rope="after_select"."""
    sel = _select_padded(q, k, v, n_valid, levels, pooling_factor, topk, scorer)
    return attend_selected(q, k, v, sel, levels, pooling_factor, rotary)


def gather_selected(x: Tensor, sel: Selection, levels: int, pooling_factor: int) -> Tensor:
    """The selected pyramid entries of x (B, H, N, D) at a valid length: (B, H, S, D) in causal order."""
    idx = sel.indices[..., None].expand(*sel.indices.shape, x.shape[3])
    return torch.cat(build_pyramid(x, levels, pooling_factor), dim=2).gather(2, idx)


def gather_rotated(q: Tensor, k: Tensor, v: Tensor, sel: Selection, levels: int, pooling_factor: int,
                   rotary: tuple[Tensor, int | Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The gathered (B, H, S, D) q, k, v the inner attention runs on: rotated after selection when `rotary` is
    (inv_freq, position_offset) (rope="after_select"), as gathered otherwise."""
    qs, ks, vs = (gather_selected(x, sel, levels, pooling_factor) for x in (q, k, v))
    if rotary is not None:
        qs, ks = rotate_selected(qs, ks, sel.indices, q.shape[2], levels, pooling_factor, *rotary)
    return qs, ks, vs


def attend_selected(q: Tensor, k: Tensor, v: Tensor, sel: Selection, levels: int, pooling_factor: int,
                    rotary: tuple[Tensor, int | Tensor] | None = None) -> Tensor:
    """Gather the selected pyramid entries, run causal attention over them, scatter back (float32 result).

    q, k, v: (B, H, N, D) at a valid length with K/V already repeated per query head. rotary: see gather_rotated.
    """
    out_sel = causal_attention(*gather_rotated(q, k, v, sel, levels, pooling_factor, rotary))
    return scatter_to_base(out_sel, sel, q.shape[2], levels, pooling_factor)


def lighthouse_attention(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
) -> Tensor:
    """Lighthouse attention (pure PyTorch reference).

    Args:
        q: (B, H, N, D) queries, RoPE applied (rope="after_select": not applied). Any floating dtype.
        k, v: (B, H_kv, N, D) with H % H_kv == 0; repeated per query head (query head h uses K/V head
            h // (H / H_kv)) before pooling, since every head selects its own entries.
        levels: pyramid levels L >= 1 (level 0 is the base sequence). L = 1 is dense causal attention.
        pooling_factor: p, a power of two >= 2; level l pools windows of p^l positions.
        topk: budget per level, a positive multiple of 128 (topk/128 tiles, each refining 64 entries by
            query score and 64 by key score), topk/2 >= p.
        scorer: "norm" (||q||, ||k||) or "dilated" (norms of 4 strided causal attention passes).
        rope: "before_pool" (q/k rotated by the caller, the published code) or "after_select" (q/k un-rotated;
            the op rotates each gathered entry at the last position its window covers; see the module docstring).
        inv_freq: rope="after_select" only: the inverse frequencies (D/2,) to rotate with, used as given (the
            model passes its `lighthouse_inv_freq`: rope_scaling applied or not, per lighthouse.rope_freqs).
        position_offset: rope="after_select" only: the position of base row 0 (an int, or one per batch row).

    Returns:
        (B, H, N, D) in q's dtype. Output t sums, over levels, the attention output of the entry whose window
        ends just before t at that level (if it was selected). Positions below p^(L-1) - 1 can be exactly zero.

    Length rule: N >= p^(L-1) * topk (else ValueError naming the minimum). If N is not a multiple of
    p^(L-1) * (topk/128) * 64 the inputs are right-padded to the next multiple; padding never changes outputs
    before N, and its outputs are dropped.

    Causality: the value path is causal. The selection looks at whole tiles (N / (topk/128) positions each),
    future tokens included: changing q or k norms at positions >= t can change outputs before t in the same
    tile. Selection is gradient-free; gradients reach q, k, v through pooling, gather, attention and scatter.
    """
    check_config(levels, pooling_factor, topk, scorer)
    check_inputs(q, k, v, levels, pooling_factor, topk)
    check_rope(rope, inv_freq, position_offset, q)
    rotary = (inv_freq, position_offset) if rope == "after_select" else None
    if levels == 1:
        if rotary is not None:
            q, k = rotate_base(q, k, *rotary)
        return causal_attention(q, k, v)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    n = q.shape[2]
    n_pad = padded_len(n, levels, pooling_factor, topk)
    out = _lighthouse_padded(
        pad_seq(q, n_pad), pad_seq(k, n_pad), pad_seq(v, n_pad), n, levels, pooling_factor, topk, scorer, rotary
    )
    return out[:, :, :n].to(q.dtype)


@torch.no_grad()
def lighthouse_select(
    q: Tensor, k: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm", v: Tensor | None = None
) -> Tensor:
    """The pyramid entries Lighthouse attention would gather, in causal order: (B, H, S) int64.

    Indices point into the concatenated pyramid [level 0 (N) | level 1 (N/p) | ...] of the (padded) sequence;
    `level_offsets(padded_len(N, ...), levels, p)` decodes them. Used by sparse decode. The dilated scorer
    also needs v. Pass the q/k the op gets (un-rotated for rope="after_select": it selects on those).
    """
    check_config(levels, pooling_factor, topk, scorer)
    if v is None:
        if scorer == "dilated":
            raise ValueError("lighthouse_select(scorer='dilated') needs v=...")
        v = k
    check_inputs(q, k, v, levels, pooling_factor, topk)
    if levels == 1:
        n = q.shape[2]
        return torch.arange(n, device=q.device).expand(q.shape[0], q.shape[1], n)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    n = q.shape[2]
    n_pad = padded_len(n, levels, pooling_factor, topk)
    q, k, v = pad_seq(q, n_pad), pad_seq(k, n_pad), pad_seq(v, n_pad)
    return _select_padded(q, k, v, n, levels, pooling_factor, topk, scorer).indices


@torch.no_grad()
def lighthouse_attention_with_context(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward only: the op's output and what it attended, for sparse decode (no second selection).

    Returns (out (B, H, N, D), k_sel (B, H, S, D), v_sel (B, H, S, D), indices (B, H, S) int64): out as
    `lighthouse_attention`; k_sel / v_sel the pooled K/V entries the op gathered for its inner attention (means
    over the zero-padded sequence, as the op computes them; with rope="after_select", K rotated at each
    window's last position, as the inner attention saw it) in k's dtype; indices as `lighthouse_select`.
    levels must be >= 2.
    """
    check_config(levels, pooling_factor, topk, scorer)
    check_inputs(q, k, v, levels, pooling_factor, topk)
    check_rope(rope, inv_freq, position_offset, q)
    if levels < 2:
        raise ValueError("lighthouse_attention_with_context needs levels >= 2 (levels=1 selects every position)")
    rotary = (inv_freq, position_offset) if rope == "after_select" else None
    n_rep = q.shape[1] // k.shape[1]
    n = q.shape[2]
    n_pad = padded_len(n, levels, pooling_factor, topk)
    qp, kp, vp = (pad_seq(x, n_pad) for x in (q, repeat_kv(k, n_rep), repeat_kv(v, n_rep)))
    sel = _select_padded(qp, kp, vp, n, levels, pooling_factor, topk, scorer)
    qs, ks, vs = gather_rotated(qp, kp, vp, sel, levels, pooling_factor, rotary)
    out = scatter_to_base(causal_attention(qs, ks, vs), sel, n_pad, levels, pooling_factor)
    return out[:, :, :n].to(q.dtype), ks.to(k.dtype), vs.to(v.dtype), sel.indices
