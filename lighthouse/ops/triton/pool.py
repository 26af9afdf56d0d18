"""Pyramid pooling and norm scores in one pass over a (B, H, N, D) tensor.

One program reads R consecutive rows of one head once and writes
  - the coarsest level's means (windows of c_top = p^(L-1) rows), or fp32 partial sums when c_top > R;
  - optionally the max-pooled norm scores of levels 1 .. L-1 (the selection never needs level 0's scores).
Intermediate levels are never written: the gather averages their few selected windows on the fly.

Exact scores. The selection breaks ties through a sorting network, so its index sets depend on every bit of the
scores, and the specification's scores are torch's `x.norm(dim=-1)` in the activation dtype. For bf16/fp16 the
squares are exact in fp32, so the only freedom is the order of the fp32 additions. `_sumsq_rows` reproduces the
orders torch's CUDA reduction uses for a contiguous row (one warp per row: either lane l holds elements
l, l+32, ... in 4 accumulators, or lane l holds a vector of V consecutive elements; accumulators are combined in
sequence, then lanes pairwise by warp shuffles). Which one a given torch build uses is found once per
(device, dtype, D) by `norm_order`, which compares each candidate with torch bit for bit on a large random probe;
if none matches, scores fall back to torch's own norm (one extra read of Q and K).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from lighthouse.ops.triton.geometry import Plan

log = logging.getLogger(__name__)

ROWS = 64  # rows per program
PAD_SCORE = -1.0  # as lighthouse_ref.PAD_SCORE
CANDIDATE_ORDERS = (1, 4, 8, 2, 16)  # vector widths; 1 = the non-vectorized reduction
CALIBRATION: dict = {}  # (device, dtype, D) -> what norm_order found (for reports)


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _pair_sum(c, R: tl.constexpr, W: tl.constexpr):
    """[R, W] -> [R, W/2]: lane 2m + lane 2m+1 (one warp-shuffle step)."""
    a, b = tl.split(tl.reshape(c, [R, W // 2, 2]))
    return a + b


@triton.jit
def _sumsq_rows(x, R: tl.constexpr, D: tl.constexpr, V: tl.constexpr, LANES: tl.constexpr,
                A: tl.constexpr, T: tl.constexpr):
    """Sum of squares of each row of x [R, D] (fp32) in the order of torch's CUDA reduction. Returns [R].

    V == 1: element l + LANES*(i + A*t) goes to lane l, accumulator i, step t.
    V > 1:  element (t*LANES + l)*V + i goes to lane l, accumulator i, step t.
    Each accumulator starts with its step-0 square and takes later steps by fma; accumulators are added in
    order 0..A-1 (V-1); then lanes are added pairwise (offsets 1, 2, 4, ...).
    """
    if V == 1:
        y = tl.reshape(x, [R, T, A, LANES])
        if T == 1:
            acc = tl.reshape(y * y, [R, A, LANES])
        else:
            t_idx = tl.arange(0, T)[None, :, None, None]
            v = tl.sum(tl.where(t_idx == 0, y, 0.0), axis=1)
            acc = v * v
            for t in tl.static_range(1, T):
                v = tl.sum(tl.where(t_idx == t, y, 0.0), axis=1)
                acc = tl.fma(v, v, acc)
        a_idx = tl.arange(0, A)[None, :, None]
        c = tl.sum(tl.where(a_idx == 0, acc, 0.0), axis=1)  # exact: one term plus zeros
        for i in tl.static_range(1, A):
            c = c + tl.sum(tl.where(a_idx == i, acc, 0.0), axis=1)
    else:
        y = tl.reshape(x, [R, T, LANES, V])
        if T == 1:
            acc = tl.reshape(y * y, [R, LANES, V])
        else:
            t_idx = tl.arange(0, T)[None, :, None, None]
            v = tl.sum(tl.where(t_idx == 0, y, 0.0), axis=1)
            acc = v * v
            for t in tl.static_range(1, T):
                v = tl.sum(tl.where(t_idx == t, y, 0.0), axis=1)
                acc = tl.fma(v, v, acc)
        i_idx = tl.arange(0, V)[None, None, :]
        c = tl.sum(tl.where(i_idx == 0, acc, 0.0), axis=2)
        for i in tl.static_range(1, V):
            c = c + tl.sum(tl.where(i_idx == i, acc, 0.0), axis=2)
    if LANES >= 32:
        c = _pair_sum(c, R, 32)
    if LANES >= 16:
        c = _pair_sum(c, R, 16)
    if LANES >= 8:
        c = _pair_sum(c, R, 8)
    if LANES >= 4:
        c = _pair_sum(c, R, 4)
    if LANES >= 2:
        c = _pair_sum(c, R, 2)
    return tl.reshape(c, [R])


@triton.jit
def _pool_kernel(
    x_ptr, coarse_ptr, score_ptr, base_ptr,
    HX, N_VALID, N_RUN, S1, s_b, s_h, s_n,
    D: tl.constexpr, R: tl.constexpr, P: tl.constexpr, CH: tl.constexpr, SC_LEVELS: tl.constexpr,
    SCORES: tl.constexpr, STORE_BASE: tl.constexpr, PARTIAL: tl.constexpr,
    V: tl.constexpr, LANES: tl.constexpr, A: tl.constexpr, T: tl.constexpr,
):
    pid = tl.program_id(0)
    nblk = N_RUN // R
    bh = pid // nblk
    blk = pid % nblk
    b = bh // HX
    h = bh % HX
    rows = blk * R + tl.arange(0, R)
    valid = rows < N_VALID
    cols = tl.arange(0, D)
    src = x_ptr + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    xr = tl.load(src + rows[:, None].to(tl.int64) * s_n + cols[None, :], mask=valid[:, None], other=0.0)
    x = xr.to(tl.float32)

    if SCORES:
        ss = _sumsq_rows(x, R, D, V, LANES, A, T)
        nrm = tl.sqrt_rn(ss).to(xr.dtype).to(tl.float32)  # the norm in the activation dtype, as the spec
        if STORE_BASE:
            tl.store(base_ptr + bh.to(tl.int64) * N_RUN + rows, nrm, mask=valid)
        nrm = tl.where(valid, nrm, -1.0)  # padding scores below every real norm (PAD_SCORE)
        srow = score_ptr + bh.to(tl.int64) * S1
        off = 0
        for lvl in tl.static_range(1, SC_LEVELS + 1):
            m = tl.max(tl.reshape(nrm, [R // (P**lvl), P**lvl]), axis=1)
            tl.store(srow + off + blk * (R // (P**lvl)) + tl.arange(0, R // (P**lvl)), m)
            off += N_RUN // (P**lvl)

    s = tl.sum(tl.reshape(x, [R // CH, CH, D]), axis=1)  # [R/CH, D] fp32 window sums
    w = blk * (R // CH) + tl.arange(0, R // CH)
    dst = coarse_ptr + bh.to(tl.int64) * (N_RUN // CH) * D + w[:, None].to(tl.int64) * D + cols[None, :]
    if PARTIAL:
        tl.store(dst, s)
    else:
        tl.store(dst, (s * (1.0 / CH)).to(xr.dtype))


# --------------------------------------------------------------------------------------------- launcher


def order_params(D: int, V: int) -> tuple[int, int, int]:
    """(LANES, A, T) of reduction order V for rows of D elements."""
    if V == 1:
        lanes = min(D, 32)
        acc = min(4, D // lanes)
        return lanes, acc, D // (acc * lanes)
    lanes = min(D // V, 32)
    return lanes, V, D // (lanes * V)


def supported(D: int, p: int) -> bool:
    return 16 <= D <= 256 and D & (D - 1) == 0 and p <= ROWS


def _num_warps(D: int) -> int:
    return 8 if D >= 256 else 4


def pool(x: Tensor, plan: Plan, order: int | None, store_base: bool = False):
    """Coarsest-level means and (if `order` is given) level 1..L-1 max-pooled norm scores of x.

    x: (B, Hx, n_valid, D), last dim contiguous. Returns (coarse (B, Hx, coarse_len, D) x.dtype,
    scores (B, Hx, score_len) fp32 or None, base norms (B, Hx, n_run) fp32 or None).
    """
    B, HX, N, D = x.shape
    assert N == plan.n_valid and x.stride(3) == 1
    p, R = plan.p, ROWS
    ch = 1
    while ch * p <= min(R, plan.c_top):
        ch *= p
    partial = ch < plan.c_top
    sc_levels = 0
    while sc_levels + 1 <= plan.top and p ** (sc_levels + 1) <= R:
        sc_levels += 1
    dev = x.device
    coarse = torch.empty(B, HX, plan.n_run // ch, D, device=dev, dtype=torch.float32 if partial else x.dtype)
    scores = torch.empty(B, HX, plan.score_len, device=dev, dtype=torch.float32) if order is not None else None
    base = torch.empty(B, HX, plan.n_run, device=dev, dtype=torch.float32) if store_base else None
    V = order if order is not None else 1
    lanes, acc, steps = order_params(D, V)
    grid = (B * HX * (plan.n_run // R),)
    _pool_kernel[grid](
        x, coarse, scores if scores is not None else coarse, base if base is not None else coarse,
        HX, N, plan.n_run, plan.score_len, x.stride(0), x.stride(1), x.stride(2),
        D=D, R=R, P=p, CH=ch, SC_LEVELS=sc_levels, SCORES=order is not None, STORE_BASE=store_base,
        PARTIAL=partial, V=V, LANES=lanes, A=acc, T=steps,
        num_warps=_num_warps(D), enable_fp_fusion=False,
    )
    if partial:  # windows larger than one program's rows: finish the sums on the host side
        coarse = (coarse.view(B, HX, plan.coarse_len, plan.c_top // ch, D).sum(3) * (1.0 / plan.c_top)).to(x.dtype)
    if scores is not None and sc_levels < plan.top:
        _finish_scores(scores, plan, sc_levels)
    return coarse, scores, base


def _finish_scores(scores: Tensor, plan: Plan, done: int) -> None:
    """Levels above `done` by max-pooling level `done` (exact: a max of maxes)."""
    offs = plan.score_offsets
    for level in range(done + 1, plan.levels):
        prev = scores[:, :, offs[level - 2] : offs[level - 2] + plan.level_len(level - 1)]
        n_l = plan.level_len(level)
        scores[:, :, offs[level - 1] : offs[level - 1] + n_l] = prev.reshape(*prev.shape[:2], n_l, plan.p).amax(-1)


def level_scores(s_base: Tensor, plan: Plan) -> Tensor:
    """(B, Hs, n_valid) base scores in the activation dtype -> (B, Hs, score_len) fp32 max-pooled levels 1..L-1,
    padding scored PAD_SCORE (the spec's order: mask, max-pool, cast)."""
    s = s_base.float()
    if plan.n_run > plan.n_valid:
        s = torch.nn.functional.pad(s, (0, plan.n_run - plan.n_valid), value=PAD_SCORE)
    B, Hs, _ = s.shape
    out = [s.view(B, Hs, plan.level_len(lv), plan.p**lv).amax(-1) for lv in range(1, plan.levels)]
    return torch.cat(out, dim=2)


# ------------------------------------------------------------------------------------------ calibration


def base_norms(x2d: Tensor, order: int) -> Tensor:
    """Row norms of a (rows, D) tensor through the kernel's order `order`, in x's dtype (for calibration/tests)."""
    rows, D = x2d.shape
    plan = Plan(rows, -(-rows // ROWS) * ROWS, 2, 2, 128)  # only n_valid/n_run/p matter for base norms
    _, _, base = pool(x2d.view(1, 1, rows, D), plan, order, store_base=True)
    return base[0, 0, :rows].to(x2d.dtype)


@functools.lru_cache(maxsize=None)
def norm_order(device: str, dtype: torch.dtype, D: int) -> int | None:
    """The candidate order that reproduces torch's `x.norm(dim=-1)` bit for bit on this device, or None.

    Override with LIGHTHOUSE_TRITON_SCORES=torch (always use torch's norm) or =fused:V (trust order V).
    """
    env = os.environ.get("LIGHTHOUSE_TRITON_SCORES", "auto").strip().lower()
    if env == "torch":
        return None
    if env.startswith("fused:"):
        return int(env.split(":", 1)[1])
    if not device.startswith("cuda"):
        return None  # torch's CPU reduction order is not emulated; use its norm
    rows = (1 << 16) if dtype == torch.float32 else (1 << 20)  # bf16/fp16 differ only near rounding ties
    g = torch.Generator(device=device).manual_seed(1234)
    x = torch.randn(rows, D, device=device, generator=g, dtype=torch.float32)
    x = (x * torch.exp(torch.randn(rows, 1, device=device, generator=g))).to(dtype)
    want = x.norm(dim=-1)
    found, report = None, {}
    for V in CANDIDATE_ORDERS:  # most likely first; stop at the first exact match (each costs a compile)
        if D // V < 1:
            continue
        got = base_norms(x, V)
        report[V] = int((got != want).sum())
        if report[V] == 0:
            found = V
            break
    CALIBRATION[(device, str(dtype), D)] = dict(order=found, mismatches=report, rows=rows)
    log.info("fused norm scores: order %s for %s D=%d on %s (mismatches per candidate: %s)", found, dtype, D, device, report)
    return found
