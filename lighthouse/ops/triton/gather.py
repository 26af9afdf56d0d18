"""Gather the selected pyramid entries straight from Q/K/V and the coarsest level, and its backward.

Forward: slot s of (b, h) holds pyramid index idx -> (level l, window i). Level 0 copies row i of the base
tensor; the coarsest level copies row i of the pooled buffer; an intermediate level averages its c = p^l base
rows on the fly (only p*topk windows per level are selected, so no intermediate level is ever materialized).
K/V rows come from KV head h // (H / H_kv): no repeated copy of K/V.

Backward (gather + every pooling level, fused, no atomics): position t of (b, h_x) sums, over the query heads h
that read head h_x and over levels l, d_sel[slot of window t // c at level l] / c, looked up through the
inverse map. Each output row is written once, in the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lighthouse.ops.triton.geometry import Plan, block

BLOCK_S = block(32)  # slots per gather program
BLOCK_T = block(64)  # positions per backward program


@triton.jit
def _decode(pyr, N_RUN, P: tl.constexpr, LEVELS: tl.constexpr):
    """pyramid index -> (level, level-local index, window size c)."""
    level = tl.zeros_like(pyr)
    local = pyr
    c = tl.full(pyr.shape, 1, pyr.dtype)
    off = 0
    for lv in tl.static_range(LEVELS):
        n_l = N_RUN // (P**lv)
        inside = (pyr >= off) & (pyr < off + n_l)
        level = tl.where(inside, lv, level)
        local = tl.where(inside, pyr - off, local)
        c = tl.where(inside, P**lv, c)
        off += n_l
    return level, local, c


@triton.jit
def _fetch(x_row, c_row, s_n, level, local, c, ok, N_VALID, cols,
           D: tl.constexpr, TOP: tl.constexpr, C_MID: tl.constexpr):
    """[BLOCK, D] rows of one tensor for decoded slots (x dtype)."""
    is0 = ok & (level == 0)
    base = tl.load(x_row + local[:, None] * s_n + cols[None, :], mask=(is0 & (local < N_VALID))[:, None], other=0.0)
    top = tl.load(c_row + local[:, None] * D + cols[None, :], mask=(ok & (level == TOP))[:, None], other=0.0)
    out = tl.where(is0[:, None], base, top)
    if C_MID > 1:  # intermediate levels: mean of c base rows, computed here
        mid = ok & (level > 0) & (level < TOP)
        acc = tl.zeros([local.shape[0], D], dtype=tl.float32)
        for j in range(0, C_MID):
            row = local * c + j
            m = mid & (j < c) & (row < N_VALID)
            acc += tl.load(x_row + row[:, None] * s_n + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        out = tl.where(mid[:, None], (acc / c.to(tl.float32)[:, None]).to(out.dtype), out)
    return out


@triton.jit
def _gather_kernel(
    q_ptr, k_ptr, v_ptr, cq_ptr, ck_ptr, cv_ptr, idx_ptr, oq_ptr, ok_ptr, ov_ptr,
    H, KV_REP, N_VALID, N_RUN, S, CL,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n,
    D: tl.constexpr, BLOCK: tl.constexpr, P: tl.constexpr, LEVELS: tl.constexpr, C_MID: tl.constexpr,
):
    pid = tl.program_id(0)
    nblk = tl.cdiv(S, BLOCK)
    bh = pid // nblk
    blk = pid % nblk
    b = bh // H
    h = bh % H
    hk = h // KV_REP
    slots = blk * BLOCK + tl.arange(0, BLOCK)
    ok = slots < S
    pyr = tl.load(idx_ptr + bh.to(tl.int64) * S + slots, mask=ok, other=0)
    level, local, c = _decode(pyr, N_RUN, P, LEVELS)
    cols = tl.arange(0, D)
    TOP: tl.constexpr = LEVELS - 1
    bk = b.to(tl.int64) * (H // KV_REP) + hk
    dst = bh.to(tl.int64) * S * D + slots[:, None].to(tl.int64) * D + cols[None, :]
    xq = _fetch(q_ptr + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h, cq_ptr + bh.to(tl.int64) * CL * D,
                sq_n, level, local, c, ok, N_VALID, cols, D, TOP, C_MID)
    tl.store(oq_ptr + dst, xq, mask=ok[:, None])
    xk = _fetch(k_ptr + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h, ck_ptr + bk * CL * D,
                sk_n, level, local, c, ok, N_VALID, cols, D, TOP, C_MID)
    tl.store(ok_ptr + dst, xk, mask=ok[:, None])
    xv = _fetch(v_ptr + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h, cv_ptr + bk * CL * D,
                sv_n, level, local, c, ok, N_VALID, cols, D, TOP, C_MID)
    tl.store(ov_ptr + dst, xv, mask=ok[:, None])


@triton.jit
def _gather_bwd_kernel(
    d1_ptr, d2_ptr, inv_ptr, o1_ptr, o2_ptr,
    H, HX, N_VALID, N_RUN, S, PYR,
    D: tl.constexpr, BLOCK: tl.constexpr, P: tl.constexpr, LEVELS: tl.constexpr, TWO: tl.constexpr,
):
    pid = tl.program_id(0)
    nblk = tl.cdiv(N_VALID, BLOCK)
    bhx = pid // nblk
    blk = pid % nblk
    b = bhx // HX
    hx = bhx % HX
    rep = H // HX
    t = blk * BLOCK + tl.arange(0, BLOCK)
    tm = t < N_VALID
    cols = tl.arange(0, D)
    acc1 = tl.zeros([BLOCK, D], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK, D], dtype=tl.float32)
    for r in range(0, rep):
        bh = (b * H + hx * rep + r).to(tl.int64)
        off = 0
        for lv in tl.static_range(LEVELS):
            w = t // (P**lv)
            slot = tl.load(inv_ptr + bh * PYR + off + w, mask=tm, other=-1)
            m = (tm & (slot >= 0))[:, None]
            src = bh * S * D + slot[:, None].to(tl.int64) * D + cols[None, :]
            acc1 += tl.load(d1_ptr + src, mask=m, other=0.0).to(tl.float32) * (1.0 / (P**lv))
            if TWO:
                acc2 += tl.load(d2_ptr + src, mask=m, other=0.0).to(tl.float32) * (1.0 / (P**lv))
            off += N_RUN // (P**lv)
    dst = bhx.to(tl.int64) * N_VALID * D + t[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(o1_ptr + dst, acc1.to(o1_ptr.dtype.element_ty), mask=tm[:, None])
    if TWO:
        tl.store(o2_ptr + dst, acc2.to(o2_ptr.dtype.element_ty), mask=tm[:, None])


def gather(q: Tensor, k: Tensor, v: Tensor, cq: Tensor, ck: Tensor, cv: Tensor, indices: Tensor, plan: Plan):
    """(B, H, S, D) gathered q, k, v. q: (B, H, n_valid, D); k, v: (B, H_kv, n_valid, D), last dim contiguous;
    cq/ck/cv: coarsest level (B, H or H_kv, coarse_len, D) contiguous; indices: (B, H, S) int64."""
    B, H, N, D = q.shape
    H_kv = k.shape[1]
    S = indices.shape[2]
    out = [torch.empty(B, H, S, D, device=q.device, dtype=q.dtype) for _ in range(3)]
    c_mid = plan.p ** (plan.levels - 2) if plan.levels > 2 else 1
    grid = (B * H * triton.cdiv(S, BLOCK_S),)
    _gather_kernel[grid](
        q, k, v, cq, ck, cv, indices.contiguous(), *out,
        H, H // H_kv, N, plan.n_run, S, plan.coarse_len,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        D=D, BLOCK=BLOCK_S, P=plan.p, LEVELS=plan.levels, C_MID=c_mid, num_warps=4,
    )
    return tuple(out)


def gather_backward(dqs: Tensor, dks: Tensor, dvs: Tensor, inv: Tensor, h_kv: int, plan: Plan):
    """Gradients (dq (B, H, n_valid, D), dk, dv (B, H_kv, n_valid, D)) from the gathered tensors' gradients."""
    B, H, S, D = dqs.shape
    N = plan.n_valid
    dq = torch.empty(B, H, N, D, device=dqs.device, dtype=dqs.dtype)
    dk = torch.empty(B, h_kv, N, D, device=dqs.device, dtype=dks.dtype)
    dv = torch.empty(B, h_kv, N, D, device=dqs.device, dtype=dvs.dtype)
    inv = inv.contiguous()
    nblk = triton.cdiv(N, BLOCK_T)
    common = dict(D=D, BLOCK=BLOCK_T, P=plan.p, LEVELS=plan.levels)
    dqs, dks, dvs = dqs.contiguous(), dks.contiguous(), dvs.contiguous()
    _gather_bwd_kernel[(B * H * nblk,)](
        dqs, dqs, inv, dq, dq, H, H, N, plan.n_run, S, plan.pyr_len, TWO=False, num_warps=4, **common)
    _gather_bwd_kernel[(B * h_kv * nblk,)](
        dks, dvs, inv, dk, dv, H, h_kv, N, plan.n_run, S, plan.pyr_len, TWO=True, num_warps=8, **common)
    return dq, dk, dv
