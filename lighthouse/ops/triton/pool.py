"""Pyramid pooling and norm scores in one pass over a (B, H, N, D) tensor.

One program reads W whole windows of the coarsest level (c_top = p^(L-1) rows each, about 128 rows in all) of
one head, each row once, and writes
  - the coarsest level's means: each window summed in fp32 in row order (r0 + r1 + ...), in registers, times
    1/c_top, cast to the activation dtype (`pool_reference_order` states it in torch);
  - optionally the max-pooled norm scores of every level 1 .. L-1 (the selection never needs level 0's scores).
Step j loads row j of each of the W windows: a [W, D] tile, 16-byte vectors along D, each row 256 contiguous
bytes at D=128 bf16; no cross-thread reduction for the means.
Intermediate levels are never written: the gather averages their few selected windows on the fly.

Exact scores. The selection breaks ties through a sorting network, so its index sets depend on every bit of the
scores, and the specification's scores are torch's `x.norm(dim=-1)` in the activation dtype. For bf16/fp16 the
squares are exact in fp32, so the only freedom is the order of the fp32 additions. `_sumsq_rows` reproduces the
orders torch's CUDA reduction uses for a contiguous row (one warp per row: either lane l holds elements
l, l+32, ... in 4 accumulators, or lane l holds a vector of V consecutive elements; accumulators are combined in
sequence, then lanes by a warp-shuffle tree with offsets decreasing, or increasing in older builds). Which one a given torch build uses is found once per
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

from lighthouse.ops.triton.geometry import INTERPRETING, Plan

log = logging.getLogger(__name__)

ROWS = 64  # the largest pooling factor supported (kept under its old name: callers quote it)
PAD_SCORE = -1.0  # as lighthouse_ref.PAD_SCORE
PAD_SCORE_K: tl.constexpr = tl.constexpr(PAD_SCORE)  # the same, for kernels
# Reduction orders: |order| is the vector width V (1 = the non-vectorized reduction); order > 0 combines lanes with
# shuffle offsets 16, 8, ..., 1 (torch's CUDA reduction once its warp tree was turned around to match Triton's),
# order < 0 with offsets 1, 2, ..., 16 (older builds, ROCm). Tried in this order: the first matches torch 2.13's
# Reduce.cuh for contiguous 16-bit rows of 128 (vectorized by 4 when the row has >= 128 elements).
CANDIDATE_ORDERS = (4, 1, 8, 2, 16, -1, -4, -8, -2, -16)
CALIBRATION: dict = {}  # (device, dtype, D) -> what norm_order found (for reports)


# ---------------------------------------------------------------------------------------------- kernels


@triton.jit
def _pair_sum(c, R: tl.constexpr, W: tl.constexpr):
    """[R, W] -> [R, W/2]: lane 2m + lane 2m+1 (one warp-shuffle step)."""
    a, b = tl.split(tl.reshape(c, [R, W // 2, 2]))
    return a + b


@triton.jit
def _half_sum(c, R: tl.constexpr, W: tl.constexpr):
    """[R, W] -> [R, W/2]: lane m + lane m + W/2 (one shuffle-down step at offset W/2; a 2-term sum is one add)."""
    return tl.sum(tl.reshape(c, [R, 2, W // 2]), axis=1)


@triton.jit
def _lane_tree(c, R: tl.constexpr, LANES: tl.constexpr, DOWN: tl.constexpr):
    """[R, LANES] -> [R, LANES/2] ... -> [R, 1]: the warp's shuffle tree, offsets LANES/2 .. 1 (DOWN) or 1 .. LANES/2."""
    for i in tl.static_range(5):  # widths 32, 16, 8, 4, 2 (those present)
        if LANES >= (32 >> i):
            if DOWN:
                c = _half_sum(c, R, 32 >> i)
            else:
                c = _pair_sum(c, R, 32 >> i)
    return c


@triton.jit
def _sumsq_rows(x, R: tl.constexpr, D: tl.constexpr, V: tl.constexpr, LANES: tl.constexpr,
                A: tl.constexpr, T: tl.constexpr, DOWN: tl.constexpr):
    """Sum of squares of each row of x [R, D] (fp32) in the order of torch's CUDA reduction. Returns [R].

    V == 1: element l + LANES*(i + A*t) goes to lane l, accumulator i, step t.
    V > 1:  element (t*LANES + l)*V + i goes to lane l, accumulator i, step t.
    Each accumulator starts with its step-0 square and takes later steps by fma; accumulators are added in
    order 0..A-1 (V-1); then lanes are added by the warp's shuffle tree: offsets LANES/2, ..., 2, 1 when DOWN
    (lane l + lane l+16 first), else 1, 2, ..., LANES/2 (lane 2m + lane 2m+1 first).
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
    c = _lane_tree(c, R, LANES, DOWN)
    return tl.reshape(c, [R])


@triton.jit
def _pool_steps(src, s_n, row0, w_ok, cols, acc, m, srow, base_row, N_VALID, N_RUN, jo,
                D: tl.constexpr, W: tl.constexpr, P: tl.constexpr, CH: tl.constexpr, U: tl.constexpr,
                SC_LEVELS: tl.constexpr, LP: tl.constexpr, SCORES: tl.constexpr, STORE_BASE: tl.constexpr,
                V: tl.constexpr, LANES: tl.constexpr, A: tl.constexpr, T: tl.constexpr, DOWN: tl.constexpr):
    """Rows jo*U .. jo*U + U-1 of each of the W windows: acc += row (fp32, in row order); scores as they close."""
    lv = tl.arange(0, LP)[:, None]
    for ji in tl.static_range(U):
        r = row0 + (jo * U + ji)  # [W] int64: this step's row of each window
        ok = w_ok & (r < N_VALID)
        xr = tl.load(src + r[:, None] * s_n + cols[None, :], mask=ok[:, None], other=0.0)
        x = xr.to(tl.float32)
        acc = acc + x
        if SCORES:
            ss = _sumsq_rows(x, W, D, V, LANES, A, T, DOWN)
            nrm = tl.sqrt_rn(ss).to(xr.dtype).to(tl.float32)  # the norm in the activation dtype, as the spec
            if STORE_BASE:
                tl.store(base_row + r, nrm, mask=ok)
            nrm = tl.where(ok, nrm, PAD_SCORE_K)  # padding scores below every real norm (PAD_SCORE)
            m = tl.maximum(m, nrm[None, :])  # running max of every level (row 0 unused)
            off = 0
            for lvl in tl.static_range(1, SC_LEVELS + 1):
                if P**lvl <= U:  # windows of this level close at static steps
                    if (ji + 1) % (P**lvl) == 0:
                        idx = (row0 + (jo * U + ji)) // (P**lvl)
                        tl.store(srow + off + idx, tl.max(tl.where(lv == lvl, m, float("-inf")), axis=0), mask=w_ok)
                        m = tl.where(lv == lvl, float("-inf"), m)
                else:  # windows span several chunks: close at the chunk's last row when the window ends there
                    if ji == U - 1:
                        fin = ((jo + 1) * U) % (P**lvl) == 0
                        idx = (row0 + (jo * U + ji)) // (P**lvl)
                        tl.store(srow + off + idx, tl.max(tl.where(lv == lvl, m, float("-inf")), axis=0),
                                 mask=w_ok & fin)
                        m = tl.where((lv == lvl) & fin, float("-inf"), m)
                off += N_RUN // (P**lvl)
    return acc, m


@triton.jit
def _pool_kernel(
    x_ptr, coarse_ptr, score_ptr, base_ptr,
    HX, N_VALID, N_RUN, S1, s_b, s_h, s_n,
    D: tl.constexpr, R: tl.constexpr, P: tl.constexpr, CH: tl.constexpr, SC_LEVELS: tl.constexpr,
    SCORES: tl.constexpr, STORE_BASE: tl.constexpr, PARTIAL: tl.constexpr,
    V: tl.constexpr, LANES: tl.constexpr, A: tl.constexpr, T: tl.constexpr, DOWN: tl.constexpr = True,
):
    """One program: W = R // CH whole coarsest-level windows (CH = c_top rows each) of one (b, h) row.

    Step j (0 .. CH-1) loads row j of every window, a [W, D] tile (16-byte vectors along D, coalesced rows), and
    adds it to the fp32 window sums: each window is summed in row order, r0 + r1 + ... (pool_reference_order
    states it), entirely in registers (no cross-thread reduction). Scores (levels 1..SC_LEVELS, all of them)
    are running maxes of the row norms, stored when their window closes. PARTIAL is unused (always False now:
    every window is summed inside one program); it stays in the signature for external compile checks.
    """
    tl.static_assert(not PARTIAL)
    W: tl.constexpr = R // CH
    # rows per unrolled chunk: a power of P (so every level's window closes at a static or chunk-end step)
    U: tl.constexpr = CH if CH <= 16 else (16 if (P == 2 or P == 4 or P == 16) else (9 if P == 3 else (8 if P == 8 else P)))
    NO: tl.constexpr = CH // U
    LP: tl.constexpr = 2 if SC_LEVELS < 2 else (4 if SC_LEVELS < 4 else (8 if SC_LEVELS < 8 else 16))
    pid = tl.program_id(0)
    CL = N_RUN // CH  # coarse windows per (b, h)
    nblk = tl.cdiv(CL, W)
    bh = pid // nblk
    blk = pid % nblk
    b = bh // HX
    h = bh % HX
    w = blk * W + tl.arange(0, W)
    w_ok = w < CL
    row0 = w.to(tl.int64) * CH
    cols = tl.arange(0, D)
    src = x_ptr + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    srow = score_ptr + bh.to(tl.int64) * S1
    base_row = base_ptr + bh.to(tl.int64) * N_RUN
    acc = tl.zeros([W, D], dtype=tl.float32)
    m = tl.full([LP, W], float("-inf"), dtype=tl.float32)
    if NO == 1:
        acc, m = _pool_steps(src, s_n, row0, w_ok, cols, acc, m, srow, base_row, N_VALID, N_RUN, 0,
                             D, W, P, CH, U, SC_LEVELS, LP, SCORES, STORE_BASE, V, LANES, A, T, DOWN)
    else:
        for jo in tl.range(0, NO):
            acc, m = _pool_steps(src, s_n, row0, w_ok, cols, acc, m, srow, base_row, N_VALID, N_RUN, jo,
                                 D, W, P, CH, U, SC_LEVELS, LP, SCORES, STORE_BASE, V, LANES, A, T, DOWN)
    dst = coarse_ptr + bh.to(tl.int64) * CL * D + w[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(dst, (acc * (1.0 / CH)).to(coarse_ptr.dtype.element_ty), mask=w_ok[:, None])


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


def windows_per_program(D: int, c_top: int) -> int:
    """W: at least one 16-byte vector per thread per step (W*D >= 1024), about 128 rows per program, steps of at
    most 16 KB (W*D <= 8192)."""
    w = max(1024 // D, triton.next_power_of_2(max(1, 128 // c_top)))
    return max(1, min(w, 8192 // D))


def pool(x: Tensor, plan: Plan, order: int | None, store_base: bool = False):
    """Coarsest-level means and (if `order` is given) level 1..L-1 max-pooled norm scores of x.

    x: (B, Hx, n_valid, D), last dim contiguous. Returns (coarse (B, Hx, coarse_len, D) x.dtype,
    scores (B, Hx, score_len) fp32 or None, base norms (B, Hx, n_run) fp32 or None).
    """
    B, HX, N, D = x.shape
    assert N == plan.n_valid and x.stride(3) == 1
    ch = plan.c_top
    W = windows_per_program(D, ch)
    if INTERPRETING:  # the interpreter pays per program and per op, not per element
        W = max(W, min(triton.next_power_of_2(plan.coarse_len), 8192 // D))
    dev = x.device
    coarse = torch.empty(B, HX, plan.coarse_len, D, device=dev, dtype=x.dtype)
    scores = torch.empty(B, HX, plan.score_len, device=dev, dtype=torch.float32) if order is not None else None
    base = torch.empty(B, HX, plan.n_run, device=dev, dtype=torch.float32) if store_base else None
    V = abs(order) if order is not None else 1
    lanes, acc, steps = order_params(D, V)
    grid = (B * HX * triton.cdiv(plan.coarse_len, W),)
    _pool_kernel[grid](
        x, coarse, scores if scores is not None else coarse, base if base is not None else coarse,
        HX, N, plan.n_run, plan.score_len, x.stride(0), x.stride(1), x.stride(2),
        D=D, R=W * ch, P=plan.p, CH=ch, SC_LEVELS=plan.top, SCORES=order is not None, STORE_BASE=store_base,
        PARTIAL=False, V=V, LANES=lanes, A=acc, T=steps, DOWN=order is None or order > 0,
        num_warps=_num_warps(D), enable_fp_fusion=False,
    )
    return coarse, scores, base


def pool_reference_order(x: Tensor, plan: Plan) -> Tensor:
    """torch-level statement of the kernel's coarsest level: each window summed in fp32 in row order, one add at a
    time (starting from 0), times 1/c_top in fp32, cast to x's dtype. x: (B, Hx, n_valid, D)."""
    B, HX, N, D = x.shape
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, plan.n_run - N)).view(B, HX, plan.coarse_len, plan.c_top, D)
    s = torch.zeros(B, HX, plan.coarse_len, D, dtype=torch.float32, device=x.device)
    for j in range(plan.c_top):
        s = s + xp[:, :, :, j]
    return (s * (1.0 / plan.c_top)).to(x.dtype)


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


MIDPOINT_BAND = 16  # fp32 ulps: rows this close to a rounding midpoint are where summation orders can disagree


def sensitive_rows(device: str, dtype: torch.dtype, D: int, g: torch.Generator, want: int = 8192,
                   chunk: int = 1 << 19, chunks: int = 32) -> Tensor:
    """Random rows whose exact norm lies within MIDPOINT_BAND fp32 ulps of a rounding midpoint of `dtype`.

    Two fp32 summation orders give norms a few fp32 ulps apart, so their bf16 norms differ only on rows near a
    midpoint: about 1-3 rows per million random rows (measured on the CPU), too few for a 1M-row probe to reject
    a wrong order reliably. On these rows a wrong order disagrees often. Empty for fp32 (no second rounding)."""
    drop = {torch.bfloat16: 16, torch.float16: 13}.get(dtype)
    if drop is None:
        return torch.empty(0, D, device=device, dtype=dtype)
    keep, n = [], 0
    for _ in range(chunks):
        x = torch.randn(chunk, D, device=device, generator=g, dtype=torch.float32)
        x = (x * torch.exp(torch.randn(chunk, 1, device=device, generator=g))).to(dtype)
        bits = x.double().pow(2).sum(-1).sqrt().float().view(torch.int32)
        dist = ((bits & ((1 << drop) - 1)) - (1 << (drop - 1))).abs()
        keep.append(x[dist <= MIDPOINT_BAND])
        n += keep[-1].shape[0]
        if n >= want:
            break
    return torch.cat(keep)[:want]


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
    near = sensitive_rows(device, dtype, D, g)
    x = torch.cat([x, near])
    want = x.norm(dim=-1)
    found, report, on_near, examples = None, {}, {}, {}
    for V in CANDIDATE_ORDERS:  # most likely first; stop at the first exact match (each costs a compile)
        if D // abs(V) < 1:
            continue
        got = base_norms(x, V)
        bad = got != want
        report[V] = int(bad.sum())
        on_near[V] = int(bad[rows:].sum())
        if report[V] == 0:
            found = V
            break
        i = bad.nonzero()[:4, 0]  # a few rows for diagnosis: torch, this order, the exact norm rounded once
        exact = x[i].double().pow(2).sum(-1).sqrt().to(dtype)
        examples[V] = [[float(want[j]), float(got[j]), float(e)] for j, e in zip(i.tolist(), exact)]
    CALIBRATION[(device, str(dtype), D)] = dict(
        order=found, mismatches=report, rows=rows, near_midpoint_rows=int(near.shape[0]),
        mismatches_near_midpoint=on_near, examples_torch_ours_exact=examples,
    )
    log.info("fused norm scores: order %s for %s D=%d on %s (mismatches per candidate: %s)", found, dtype, D, device, report)
    return found
