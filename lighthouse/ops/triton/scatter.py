"""Scatter fan-out and its backward, deterministic and without launch-grid limits.

Forward, one program per block of output positions (a 1-D grid over B*H*ceil(N/BLOCK)): at level l position t
can only receive from window w = (t+1)//c - 1 (c = p^l). Its slot in the attention output comes from the inverse
map; the row is read and summed in fp32, coarsest level first (the reference's order), and each output row is
written once. No atomics, no zero-fill pass, the same bits on every run.

Backward, one program per block of selected slots: entry (l, i) sums the upstream gradient over its fan-out
positions [i*c + c - 1, i*c + 2c - 1) clipped to N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lighthouse.ops.triton.gather import _decode
from lighthouse.ops.triton.geometry import Plan, block

BLOCK_T = block(64)  # output positions per forward program
BLOCK_S = block(32)  # slots per backward program


@triton.jit
def _scatter_kernel(
    o_ptr, inv_ptr, out_ptr,
    N_VALID, N_RUN, S, PYR,
    D: tl.constexpr, BLOCK: tl.constexpr, P: tl.constexpr, LEVELS: tl.constexpr,
):
    pid = tl.program_id(0)
    nblk = tl.cdiv(N_VALID, BLOCK)
    bh = (pid // nblk).to(tl.int64)
    blk = pid % nblk
    t = blk * BLOCK + tl.arange(0, BLOCK)
    tm = t < N_VALID
    cols = tl.arange(0, D)
    acc = tl.zeros([BLOCK, D], dtype=tl.float32)
    for lv in tl.static_range(LEVELS - 1, -1, -1):  # coarsest first
        off = 0
        for m in tl.static_range(0, lv):
            off += N_RUN // (P**m)
        w = (t + 1) // (P**lv) - 1
        ok = tm & (w >= 0)
        slot = tl.load(inv_ptr + bh * PYR + off + w, mask=ok, other=-1)
        ok = ok & (slot >= 0)
        acc += tl.load(o_ptr + bh * S * D + slot[:, None].to(tl.int64) * D + cols[None, :],
                       mask=ok[:, None], other=0.0).to(tl.float32)
    dst = bh * N_VALID * D + t[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(out_ptr + dst, acc.to(out_ptr.dtype.element_ty), mask=tm[:, None])


@triton.jit
def _scatter_bwd_kernel(
    g_ptr, idx_ptr, d_ptr,
    H, N_VALID, N_RUN, S, s_b, s_h, s_n,
    D: tl.constexpr, BLOCK: tl.constexpr, P: tl.constexpr, LEVELS: tl.constexpr,
):
    pid = tl.program_id(0)
    nblk = tl.cdiv(S, BLOCK)
    bh = pid // nblk
    blk = pid % nblk
    b = bh // H
    h = bh % H
    slots = blk * BLOCK + tl.arange(0, BLOCK)
    ok = slots < S
    pyr = tl.load(idx_ptr + bh.to(tl.int64) * S + slots, mask=ok, other=0)
    level, local, c = _decode(pyr, N_RUN, P, LEVELS)
    c = tl.where(ok, c, 0)
    start = local * c + c - 1
    cols = tl.arange(0, D)
    g_row = g_ptr + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h
    acc = tl.zeros([BLOCK, D], dtype=tl.float32)
    for j in range(0, tl.max(c, axis=0)):
        pos = start + j
        m = (j < c) & (pos < N_VALID)
        acc += tl.load(g_row + pos[:, None] * s_n + cols[None, :], mask=m[:, None], other=0.0).to(tl.float32)
    dst = bh.to(tl.int64) * S * D + slots[:, None].to(tl.int64) * D + cols[None, :]
    tl.store(d_ptr + dst, acc.to(d_ptr.dtype.element_ty), mask=ok[:, None])


def scatter(o_sel: Tensor, inv: Tensor, plan: Plan) -> Tensor:
    """(B, H, S, D) attention outputs in causal order -> (B, H, n_valid, D) in o_sel's dtype."""
    B, H, S, D = o_sel.shape
    N = plan.n_valid
    out = torch.empty(B, H, N, D, device=o_sel.device, dtype=o_sel.dtype)
    grid = (B * H * triton.cdiv(N, BLOCK_T),)
    _scatter_kernel[grid](
        o_sel.contiguous(), inv.contiguous(), out, N, plan.n_run, S, plan.pyr_len,
        D=D, BLOCK=BLOCK_T, P=plan.p, LEVELS=plan.levels, num_warps=4,
    )
    return out


def scatter_backward(grad: Tensor, indices: Tensor, plan: Plan) -> Tensor:
    """(B, H, n_valid, D) upstream gradient (any strides, last dim contiguous) -> (B, H, S, D) per-entry sums."""
    if grad.stride(3) != 1:
        grad = grad.contiguous()
    B, H, N, D = grad.shape
    S = indices.shape[2]
    d_sel = torch.empty(B, H, S, D, device=grad.device, dtype=grad.dtype)
    grid = (B * H * triton.cdiv(S, BLOCK_S),)
    _scatter_bwd_kernel[grid](
        grad, indices.contiguous(), d_sel, H, N, plan.n_run, S, grad.stride(0), grad.stride(1), grad.stride(2),
        D=D, BLOCK=BLOCK_S, P=plan.p, LEVELS=plan.levels, num_warps=4,
    )
    return d_sel
