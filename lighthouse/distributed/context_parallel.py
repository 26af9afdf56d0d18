"""Context-parallel Lighthouse attention: one prompt's sequence sharded over W ranks, forward only (prefill).

Layout (the paper's context-parallel path, torchtitan's load-balanced split): the padded sequence of N positions
is cut into 2W chunks of C = N / (2W); rank r holds chunk r (its "head") and chunk 2W-1-r (its "tail"),
concatenated: (B, H, 2C, D). Under causal attention chunk c costs c+1 units, so every rank does 2W+1 units.

Why the op splits this way: the selection is per tile (a tile is a contiguous span of the coarsest level, and
no tile looks at another's scores), and every pooled window lies inside one chunk once p^(L-1) divides C. With
topk/128 tiles a multiple of 2W, each chunk holds topk/(2W)/128 whole tiles, so a rank scores, pools and
selects its two chunks alone with budget topk/(2W) each (the official LighthouseCP's k/(2W) per half). The keys
of a chunk's entries lie inside the chunk, so the global causal order is the chunks' orders one after another.
Then, per layer, through torch.distributed collectives only:

  1. all_gather the selected K and V entries (S_c = C/p^(L-1) + (L-1)*p*topk/(2W) per chunk, a small fraction
     of C), so chunk c's gathered queries attend, causally, to the entries of chunks 0..c;
  2. scatter each chunk's outputs to its positions; the last window of each level fans out up to p^(L-1)-1
     positions past the chunk's end, into the next chunk: that "spill" is all_gathered and added there.

The official LighthouseCP scatters each half locally and drops the spill, so the first positions of its chunks
lose their contribution from the previous chunk's last windows; with the spill exchanged, the result equals the
single-process op (lighthouse.ops) on the whole sequence, position for position (tests/distributed/test_context_parallel.py).

Built on the reference op's pieces (lighthouse.ops.lighthouse_ref); the scorer must be "norm" (dilated scores
run strided attention over the whole sequence, as the official CP path also refuses).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lighthouse.ops.attention import attention_with_cache, repeat_kv
from lighthouse.ops.lighthouse_ref import PAD_SCORE, gather_rotated, max_pool_scores, norm_scores, select
from lighthouse.ops.validation import TILE_BUDGET, check_config, check_rope, min_seq_len, padded_len


# ------------------------------------------------------------------------------------------------ layout


def head_tail_chunks(rank: int, world: int) -> tuple[int, int]:
    """The two chunks (of 2*world) that `rank` holds: its head and its tail."""
    return rank, 2 * world - 1 - rank


def context_parallel_len(n: int, world: int, *, levels: int | None = None, pooling_factor: int = 2,
                         topk: int = TILE_BUDGET) -> int:
    """The padded length N a sequence of n positions is sharded at (levels=None: dense attention only).

    With Lighthouse it is the single-process op's own padded length (so both select over the same tiles), which
    needs topk/128 to be a multiple of 2*world; without, n rounded up to a multiple of 2*world."""
    if levels is None or levels == 1:
        return -(-n // (2 * world)) * 2 * world
    tiles = topk // TILE_BUDGET
    if tiles % (2 * world):
        raise ValueError(
            f"context parallelism over {world} ranks splits the sequence into {2 * world} chunks, each needing whole "
            f"selection tiles: topk/128 ({tiles}) must be a multiple of {2 * world} (topk a multiple of "
            f"{2 * world * TILE_BUDGET}); use fewer ranks or a checkpoint with a larger topk"
        )
    return padded_len(n, levels, pooling_factor, topk)


def shard_sequence(x: Tensor, rank: int, world: int, dim: int = 2) -> Tensor:
    """This rank's head and tail chunks of x along `dim` (its length a multiple of 2*world), concatenated."""
    chunks = x.chunk(2 * world, dim=dim)
    head, tail = head_tail_chunks(rank, world)
    return torch.cat([chunks[head], chunks[tail]], dim=dim)


def unshard_sequence(x: Tensor, dim: int = 2, group=None) -> Tensor:
    """Collective: every rank's (head, tail) shard along `dim` -> the whole sequence in order, on every rank."""
    return _chunk_order(_all_gather(x.contiguous(), group), dist.get_world_size(group), dim)


def _all_gather(x: Tensor, group) -> list[Tensor]:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return parts


def _chunk_order(parts: list[Tensor], world: int, dim: int = 2) -> Tensor:
    """all_gather'ed (head, tail) pieces of equal length -> concatenated in chunk order 0 .. 2W-1."""
    chunks: list[Tensor | None] = [None] * (2 * world)
    for r, part in enumerate(parts):
        head, tail = head_tail_chunks(r, world)
        chunks[head], chunks[tail] = part.chunk(2, dim=dim)
    return torch.cat(chunks, dim=dim)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- dense attention


@torch.no_grad()
def context_parallel_causal_attention(q: Tensor, k: Tensor, v: Tensor, group=None) -> Tensor:
    """Dense causal attention over a sharded sequence. q (B, H, 2C, D), k/v (B, H_kv, 2C, D): this rank's head and
    tail chunks. Every rank all_gathers the whole K/V (memory O(N); ring attention would pass it round instead);
    each chunk's queries attend to every position up to their own. Returns (B, H, 2C, D)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    k_all = _chunk_order(_all_gather(k.contiguous(), group), world)  # (B, H_kv, N, D)
    v_all = _chunk_order(_all_gather(v.contiguous(), group), world)
    C = q.shape[2] // 2
    outs = []
    for half, c in zip(q.split(C, dim=2), head_tail_chunks(rank, world)):
        end = (c + 1) * C  # bottom-right aligned: query j of chunk c is position c*C + j
        outs.append(attention_with_cache(half, k_all[:, :, :end], v_all[:, :, :end]))
    return torch.cat(outs, dim=2)


# ---------------------------------------------------------------------------------- Lighthouse attention


@torch.no_grad()
def context_parallel_lighthouse_attention(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, n_valid: int | None = None,
    scorer: str = "norm", rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int = 0,
    group=None,
) -> Tensor:
    """Lighthouse attention over a sequence sharded in the head-tail layout, forward only.

    Args:
        q: (B, H, 2C, D) this rank's head and tail chunks (`shard_sequence`); k, v: (B, H_kv, 2C, D).
            The whole sequence has N = 2 * world * C positions, N = context_parallel_len(n_valid, ...).
        levels, pooling_factor, topk, scorer, rope, inv_freq: as `lighthouse.lighthouse_attention` (scorer "norm"
            only). position_offset: rope="after_select": the position of the sequence's first row (an int).
        n_valid: positions >= n_valid are padding (default N): their scores rank below every real one, as the
            single-process op pads. Pad with zeros to match it everywhere; any padding leaves outputs < n_valid
            unchanged (the value path is causal).
        group: the process group of the W ranks (default: the world).

    Returns:
        (B, H, 2C, D) in q's dtype: at every position the single-process op's output on the whole sequence
        (the first n_valid positions), on the same ranks' chunks.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    N = q.shape[2] * world
    n_valid = N if n_valid is None else n_valid
    _check(q, k, v, levels, pooling_factor, topk, scorer, rope, inv_freq, position_offset, N, n_valid, world)
    if levels == 1:
        if rope == "after_select":
            raise ValueError("levels=1 is dense attention: rotate q/k yourself and use context_parallel_causal_attention")
        return context_parallel_causal_attention(q, k, v, group)
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # every query head selects its own entries
    C, topk_c = q.shape[2] // 2, topk // (2 * world)
    picked = []  # per own chunk: (selection, gathered q, k, v)
    for c, qc, kc, vc in zip(head_tail_chunks(rank, world), q.split(C, 2), k.split(C, 2), v.split(C, 2)):
        sel = _select_chunk(qc, kc, n_valid - c * C, levels, pooling_factor, topk_c)
        rotary = (inv_freq, position_offset + c * C) if rope == "after_select" else None
        picked.append((sel, *gather_rotated(qc, kc, vc, sel, levels, pooling_factor, rotary)))
    S_c = picked[0][1].shape[2]  # the same in every chunk
    ks_all = _chunk_order(_all_gather(torch.cat([p[2] for p in picked], 2), group), world)  # (B, H, 2W*S_c, D)
    vs_all = _chunk_order(_all_gather(torch.cat([p[3] for p in picked], 2), group), world)
    outs, spills = [], []
    for c, (sel, qs, _, _) in zip(head_tail_chunks(rank, world), picked):
        end = (c + 1) * S_c  # chunk c's entries attend to those of chunks 0..c, causally within c
        o_sel = attention_with_cache(qs, ks_all[:, :, :end], vs_all[:, :, :end])
        out, spill = _scatter_with_spill(o_sel, sel, C, levels, pooling_factor)
        outs.append(out)
        spills.append(spill)
    all_spills = _chunk_order(_all_gather(torch.cat(spills, 2), group), world)  # (B, H, 2W*(c_top-1), D)
    width = spills[0].shape[2]
    for out, c in zip(outs, head_tail_chunks(rank, world)):
        if c > 0 and width:  # the previous chunk's last windows fan out into this chunk's first positions
            out[:, :, :width] += all_spills[:, :, (c - 1) * width : c * width]
    return torch.cat(outs, dim=2).to(q.dtype)


def _select_chunk(q: Tensor, k: Tensor, n_valid: int, levels: int, pooling_factor: int, topk: int):
    """The selection of one chunk's tiles (norm scores; positions >= n_valid scored as padding)."""
    s_q, s_k = norm_scores(q, k)
    if n_valid < q.shape[2]:
        s_q[..., max(0, n_valid):] = PAD_SCORE
        s_k[..., max(0, n_valid):] = PAD_SCORE
    return select(max_pool_scores(s_q, levels, pooling_factor), max_pool_scores(s_k, levels, pooling_factor),
                  q.shape[2], levels, pooling_factor, topk)


def _scatter_with_spill(out_sel: Tensor, sel, n: int, levels: int, pooling_factor: int) -> tuple[Tensor, Tensor]:
    """lighthouse_ref.scatter_to_base over one chunk, keeping what falls past its end.

    out_sel: (B, H, S, D) in sel.indices order. Entry (level l, window i) adds to positions [i*c + c-1, i*c + 2c-1),
    c = p^l. Returns (B, H, n, D) float32 and the (B, H, p^(L-1) - 1, D) float32 that lands past position n-1."""
    B, H, S, D = out_sel.shape
    bh, ext = B * H, n + pooling_factor ** (levels - 1) - 1
    inv = torch.empty_like(sel.order).scatter_(2, sel.order, torch.arange(S, device=out_sel.device).expand(B, H, S))
    grouped = out_sel.gather(2, inv[..., None].expand(B, H, S, D)).to(torch.promote_types(out_sel.dtype, torch.float32))
    acc = grouped.new_zeros(bh * ext + 1, D)  # + a spare row for writes past the extension
    row = (torch.arange(bh, device=out_sel.device) * ext)[:, None, None]
    start = 0
    for level in range(levels - 1, -1, -1):  # the grouped layout: coarsest level first
        c = pooling_factor**level
        i = sel.local[level].reshape(bh, -1)
        count = i.shape[1]
        vals = grouped[:, :, start : start + count].reshape(bh, count, 1, D).expand(bh, count, c, D)
        pos = i[:, :, None] * c + (c - 1) + torch.arange(c, device=i.device)
        acc = torch.index_add(acc, 0, torch.where(pos < ext, row + pos, bh * ext).reshape(-1), vals.reshape(-1, D))
        start += count
    acc = acc[: bh * ext].view(B, H, ext, D)
    return acc[:, :, :n], acc[:, :, n:]


def _check(q, k, v, levels, pooling_factor, topk, scorer, rope, inv_freq, position_offset, N, n_valid, world) -> None:
    check_config(levels, pooling_factor, topk, scorer)
    check_rope(rope, inv_freq, position_offset, q)
    if scorer != "norm":
        raise ValueError(f"context-parallel Lighthouse supports scorer='norm' only (got {scorer!r}): the dilated "
                         "scorer runs strided attention over the whole sequence")
    if isinstance(position_offset, Tensor):
        raise ValueError("context-parallel Lighthouse takes position_offset as an int (one start for every row)")
    if q.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(f"q must be (B, H, 2C, D) and k, v (B, H_kv, 2C, D) with H % H_kv == 0; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] % 2:
        raise ValueError(f"each rank holds two equal chunks: the local length must be even (got {q.shape[2]})")
    if not 0 < n_valid <= N:
        raise ValueError(f"n_valid must be in 1..{N} (the sharded length); got {n_valid}")
    need = min_seq_len(levels, pooling_factor, topk)
    if n_valid < need:
        raise ValueError(f"{n_valid} positions are too short for levels={levels}, pooling_factor={pooling_factor}, "
                         f"topk={topk}: the minimum is {need}; use context_parallel_causal_attention below it")
    want = context_parallel_len(n_valid, world, levels=levels, pooling_factor=pooling_factor, topk=topk)
    if N != want:
        raise ValueError(f"{n_valid} positions over {world} ranks must be sharded at length {want} (the op's padded "
                         f"length, so both select over the same tiles), got {N} = {world} x {q.shape[2]}; pad to "
                         f"context_parallel_len(...) and shard with shard_sequence")
