"""The selection cascade: one program per (batch, head, tile), the specification's sorting network lane for lane.

Per level (coarsest first) a program streams its candidates in batches of 64 through two 128-lane descending
bitonic sorts: [running s_q top-64 | 64 newcomers], then [running s_k top-64 | the 64 the first sort pushed
out]. Compare-exchange swaps only on strict inequality (ties are common in bf16; the network decides them).

Each lane carries one int64: the score's order-preserving int32 bits in the high word and (candidate position
+ 1) in the low word (0 = empty lane). Comparisons look at the high word only, so equal scores never swap.

Emission. Each tile writes exactly `plan.seg` entries, packed as (sort key << 32) | pyramid index, with sort
keys scaled by 2^(L-1) so every key is an integer: a rejected window at level l, index i -> c*i; a refined one ->
c*(i+1) - 2^-l; a base token -> its position. A candidate is first written as rejected; after the level's last
batch the 128 refined ones overwrite their slots. Tiles cover disjoint key ranges in order, so sorting each
tile's segment (one torch.sort over (B*H*tiles, seg)) gives the whole causal order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lighthouse.ops.triton.geometry import Plan

SENTINEL = tl.constexpr(-1e6)  # score of an empty lane (as lighthouse_ref.SENTINEL)


@triton.jit
def _pack(score, ident):
    """fp32 score, int candidate position (-1 = empty) -> int64 lane value."""
    s = tl.where(score == 0.0, 0.0, score)  # -0.0 sorts equal to +0.0
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # order-preserving for every non-NaN float
    return (key.to(tl.int64) << 32) + (ident + 1).to(tl.int64)


@triton.jit
def _ident(x):
    """int64 lane value -> candidate position (-1 = empty), int32."""
    return (x - ((x >> 32) << 32) - 1).to(tl.int32)


@triton.jit
def _cat64(a, b):
    """two [64] -> [128], a in lanes 0..63."""
    return tl.reshape(tl.permute(tl.join(a, b), [1, 0]), [128])


@triton.jit
def _halves(x):
    """[128] -> (lanes 0..63, lanes 64..127)."""
    return tl.split(tl.permute(tl.reshape(x, [2, 64]), [1, 0]))


@triton.jit
def _compare_exchange(x, K: tl.constexpr, J: tl.constexpr):
    """One stage: lane t meets lane t ^ J; the pair sorts descending when (t & K) == 0, else ascending."""
    NB: tl.constexpr = 128 // (2 * J)
    lo, hi = tl.split(tl.permute(tl.reshape(x, [NB, 2, J]), [0, 2, 1]))  # [NB, J] each
    desc = ((tl.arange(0, NB)[:, None] * (2 * J)) & K) == 0
    klo = lo >> 32
    khi = hi >> 32
    swap = tl.where(desc, klo < khi, klo > khi)
    nlo = tl.where(swap, hi, lo)
    nhi = tl.where(swap, lo, hi)
    return tl.reshape(tl.permute(tl.join(nlo, nhi), [0, 2, 1]), [128])


@triton.jit
def _sort128(x):
    """The full 128-lane bitonic sort (k = 2..128, j = k/2..1), descending overall."""
    for kk in tl.static_range(1, 8):
        for jj in tl.static_range(0, kk):
            x = _compare_exchange(x, 1 << kk, 1 << (kk - 1 - jj))
    return x


@triton.jit
def _cand_index(j, par, tile, SPAN, lvl: tl.constexpr, TOP: tl.constexpr, P: tl.constexpr):
    """Level-local index of candidate position j (-1 stays -1)."""
    if lvl == TOP:
        idx = tile * SPAN + j
    else:
        parent = tl.load(par + (lvl + 1) * 128 + j // P, mask=j >= 0, other=-1)
        idx = parent * P + j % P
        idx = tl.where((j >= 0) & (parent >= 0), idx, -1)
    return tl.where(j >= 0, idx, -1)


@triton.jit
def _merge_k(tk, spill, sk_lvl, par, tile, SPAN, lvl: tl.constexpr, TOP: tl.constexpr, P: tl.constexpr):
    """The s_k list's step: [running s_k top-64 | the s_q sort's 64 rejects], re-scored by s_k."""
    rj = _ident(spill)
    ridx = _cand_index(rj, par, tile, SPAN, lvl, TOP, P)
    sk = tl.load(sk_lvl + ridx, mask=ridx >= 0, other=SENTINEL)
    tk, _unused = _halves(_sort128(_cat64(tk, _pack(sk, rj))))
    return tk


@triton.jit
def _cascade_level(sq_row, sk_row, seg, par, tile, SPAN, N_RUN, emit,
                   lvl: tl.constexpr, TOP: tl.constexpr, P: tl.constexpr):
    """Stream one level's candidates; emit them; store the refined 128 as the next level's parents."""
    lane = tl.arange(0, 64)
    soff = 0  # level lvl in the score buffer [level 1 | level 2 | ...]
    for m in tl.static_range(1, lvl):
        soff += N_RUN // (P**m)
    poff = 0  # level lvl in the pyramid [level 0 | level 1 | ...]
    for m in tl.static_range(0, lvl):
        poff += N_RUN // (P**m)
    if lvl == TOP:
        M = SPAN
    else:
        M = 128 * P
    tq = _pack(tl.full([64], SENTINEL, tl.float32), tl.full([64], -1, tl.int32))
    tk = tq
    out = tq  # the s_q sort's spill, fed to the s_k sort one batch later (two independent chains per step)
    for start in range(0, M, 64):
        j = start + lane
        idx = _cand_index(j, par, tile, SPAN, lvl, TOP, P)
        # every candidate is emitted; as rejected until shown refined
        rkey = idx.to(tl.int64) * ((P**lvl) << TOP)
        tl.store(seg + emit + j, (rkey << 32) + poff + idx)
        s = tl.load(sq_row + soff + idx, mask=idx >= 0, other=SENTINEL)
        tk = _merge_k(tk, out, sk_row + soff, par, tile, SPAN, lvl, TOP, P)  # previous batch's spill
        tq, out = _halves(_sort128(_cat64(tq, _pack(s, j))))
    tk = _merge_k(tk, out, sk_row + soff, par, tile, SPAN, lvl, TOP, P)
    rj = _cat64(_ident(tq), _ident(tk))  # s_q list then s_k list, network order: the next level's parents
    ridx = _cand_index(rj, par, tile, SPAN, lvl, TOP, P)
    tl.debug_barrier()  # this level's rejected writes land first
    fkey = (ridx + 1).to(tl.int64) * ((P**lvl) << TOP) - (1 << (TOP - lvl))
    tl.store(seg + emit + rj, (fkey << 32) + poff + ridx, mask=rj >= 0)
    tl.store(par + lvl * 128 + tl.arange(0, 128), ridx)
    tl.debug_barrier()  # parents visible to the next level
    return emit + M


@triton.jit
def _cascade_kernel(
    sq_ptr, sk_ptr, key_ptr, par_ptr,
    H, KQ_REP, N_RUN, S1, SPAN, SEG, TILES,
    P: tl.constexpr, LEVELS: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = pid // TILES
    tile = pid % TILES
    b = bh // H
    h = bh % H
    sq_row = sq_ptr + bh.to(tl.int64) * S1
    sk_row = sk_ptr + (b * (H // KQ_REP) + h // KQ_REP).to(tl.int64) * S1
    seg = key_ptr + pid.to(tl.int64) * SEG
    par = par_ptr + pid.to(tl.int64) * (LEVELS * 128)  # slot l: the 128 refined indices of level l
    emit = 0
    for lvl in tl.static_range(LEVELS - 1, 0, -1):
        emit = _cascade_level(sq_row, sk_row, seg, par, tile, SPAN, N_RUN, emit, lvl, LEVELS - 1, P)
    # base level: the p children of each refined level-1 window, keyed by position
    lane128 = tl.arange(0, 128)
    for start in range(0, 128 * P, 128):
        j = start + lane128
        parent = tl.load(par + 128 + j // P)
        pos = tl.where(parent >= 0, parent * P + j % P, 0)
        tl.store(seg + emit + j, ((pos.to(tl.int64) << (LEVELS - 1)) << 32) + pos)


def select(s_q: Tensor, s_k: Tensor, plan: Plan, kq_rep: int) -> tuple[Tensor, Tensor]:
    """Run the cascade and the sort.

    s_q: (B, H, score_len) fp32 level 1..L-1 scores per query head; s_k: (B, H // kq_rep, score_len).
    Returns indices (B, H, S) int64 pyramid indices in causal order and inv (B, H, pyr_len) int32 (the slot
    of each pyramid entry in `indices`, -1 where not selected).
    """
    plan.check()
    B, H, S1 = s_q.shape
    assert S1 == plan.score_len and s_k.shape == (B, H // kq_rep, S1)
    rows = B * H * plan.tiles
    keys = torch.empty(rows, plan.seg, device=s_q.device, dtype=torch.int64)
    parents = torch.empty(rows, plan.levels * 128, device=s_q.device, dtype=torch.int32)
    _cascade_kernel[(rows,)](
        s_q.contiguous(), s_k.contiguous(), keys, parents,
        H, kq_rep, plan.n_run, S1, plan.span, plan.seg, plan.tiles,
        P=plan.p, LEVELS=plan.levels, num_warps=1,
    )
    indices = (torch.sort(keys, dim=1).values & 0xFFFFFFFF).view(B, H, plan.S)
    return indices, inverse(indices, plan)


def inverse(indices: Tensor, plan: Plan) -> Tensor:
    """(B, H, S) pyramid indices -> (B, H, pyr_len) int32 slot map (-1 = not selected)."""
    B, H, S = indices.shape
    inv = torch.full((B, H, plan.pyr_len), -1, device=indices.device, dtype=torch.int32)
    slots = torch.arange(S, device=indices.device, dtype=torch.int32).expand(B, H, S)
    return inv.scatter_(2, indices, slots)
