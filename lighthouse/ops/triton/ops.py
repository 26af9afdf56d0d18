"""torch.library custom ops around the kernels (so torch.compile and CUDA graphs can trace them), their fake
(meta) implementations, and autograd: gradients flow through gather (with every pooling level) and scatter;
pooling-for-scores and selection are gradient-free; the inner attention is plain `causal_attention` (cuDNN SDPA
on GPU), whose own autograd runs between the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.ops.triton import gather as _gather
from lighthouse.ops.triton import pool as _pool
from lighthouse.ops.triton import scatter as _scatter
from lighthouse.ops.triton import select as _select
from lighthouse.ops.triton.geometry import Plan

_NS = "lighthouse"


def _plan(n_valid: int, levels: int, p: int, topk: int) -> Plan:
    return Plan.make(n_valid, levels, p, topk)


# ------------------------------------------------------------------------------------------------ pool


@torch.library.custom_op(f"{_NS}::pool", mutates_args=())
def pool_op(x: Tensor, levels: int, p: int, topk: int, order: int) -> tuple[Tensor, Tensor]:
    """Coarsest level (B, Hx, coarse_len, D) and, for order >= 1, fp32 scores (B, Hx, score_len) (else empty)."""
    plan = _plan(x.shape[2], levels, p, topk)
    coarse, scores, _ = _pool.pool(x, plan, order if order >= 1 else None)
    return coarse, scores if scores is not None else x.new_empty(0, dtype=torch.float32)


@pool_op.register_fake
def _(x, levels, p, topk, order):
    plan = _plan(x.shape[2], levels, p, topk)
    B, HX, _, D = x.shape
    scores = x.new_empty(B, HX, plan.score_len, dtype=torch.float32) if order >= 1 else x.new_empty(0, dtype=torch.float32)
    return x.new_empty(B, HX, plan.coarse_len, D), scores


# ---------------------------------------------------------------------------------------------- select


@torch.library.custom_op(f"{_NS}::select", mutates_args=())
def select_op(s_q: Tensor, s_k: Tensor, n_valid: int, levels: int, p: int, topk: int, kq_rep: int) -> tuple[Tensor, Tensor]:
    """(indices (B, H, S) int64 in causal order, inv (B, H, pyr_len) int32)."""
    return _select.select(s_q, s_k, _plan(n_valid, levels, p, topk), kq_rep)


@select_op.register_fake
def _(s_q, s_k, n_valid, levels, p, topk, kq_rep):
    plan = _plan(n_valid, levels, p, topk)
    B, H = s_q.shape[:2]
    return s_q.new_empty(B, H, plan.S, dtype=torch.int64), s_q.new_empty(B, H, plan.pyr_len, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------- gather


@torch.library.custom_op(f"{_NS}::gather", mutates_args=())
def gather_op(
    q: Tensor, k: Tensor, v: Tensor, cq: Tensor, ck: Tensor, cv: Tensor, indices: Tensor, inv: Tensor,
    levels: int, p: int, topk: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gathered (B, H, S, D) q, k, v. cq/ck/cv are the coarsest level of q/k/v (treated as constants: the
    backward routes their gradient to q/k/v itself); inv is carried for the backward."""
    return _gather.gather(q, k, v, cq, ck, cv, indices, _plan(q.shape[2], levels, p, topk))


@gather_op.register_fake
def _(q, k, v, cq, ck, cv, indices, inv, levels, p, topk):
    B, H, _, D = q.shape
    S = indices.shape[2]
    return tuple(q.new_empty(B, H, S, D) for _ in range(3))


@torch.library.custom_op(f"{_NS}::gather_backward", mutates_args=())
def gather_backward_op(
    dqs: Tensor, dks: Tensor, dvs: Tensor, inv: Tensor, h_kv: int, n_valid: int, levels: int, p: int, topk: int
) -> tuple[Tensor, Tensor, Tensor]:
    return _gather.gather_backward(dqs, dks, dvs, inv, h_kv, _plan(n_valid, levels, p, topk))


@gather_backward_op.register_fake
def _(dqs, dks, dvs, inv, h_kv, n_valid, levels, p, topk):
    B, H, _, D = dqs.shape
    return dqs.new_empty(B, H, n_valid, D), dks.new_empty(B, h_kv, n_valid, D), dvs.new_empty(B, h_kv, n_valid, D)


def _gather_setup(ctx, inputs, output):
    q, k, *_rest = inputs
    ctx.save_for_backward(inputs[7])
    ctx.meta = (k.shape[1], q.shape[2], inputs[8], inputs[9], inputs[10])


def _gather_bwd(ctx, dqs, dks, dvs):
    (inv,) = ctx.saved_tensors
    h_kv, n_valid, levels, p, topk = ctx.meta
    dq, dk, dv = gather_backward_op(dqs, dks, dvs, inv, h_kv, n_valid, levels, p, topk)
    return dq, dk, dv, None, None, None, None, None, None, None, None


gather_op.register_autograd(_gather_bwd, setup_context=_gather_setup)


# --------------------------------------------------------------------------------------------- scatter


@torch.library.custom_op(f"{_NS}::scatter", mutates_args=())
def scatter_op(o_sel: Tensor, inv: Tensor, indices: Tensor, n_valid: int, levels: int, p: int, topk: int) -> Tensor:
    """(B, H, S, D) outputs in causal order -> (B, H, n_valid, D); indices carried for the backward."""
    return _scatter.scatter(o_sel, inv, _plan(n_valid, levels, p, topk))


@scatter_op.register_fake
def _(o_sel, inv, indices, n_valid, levels, p, topk):
    B, H, _, D = o_sel.shape
    return o_sel.new_empty(B, H, n_valid, D)


@torch.library.custom_op(f"{_NS}::scatter_backward", mutates_args=())
def scatter_backward_op(grad: Tensor, indices: Tensor, n_valid: int, levels: int, p: int, topk: int) -> Tensor:
    return _scatter.scatter_backward(grad, indices, _plan(n_valid, levels, p, topk))


@scatter_backward_op.register_fake
def _(grad, indices, n_valid, levels, p, topk):
    B, H, _, D = grad.shape
    return grad.new_empty(B, H, indices.shape[2], D)


def _scatter_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[2])
    ctx.meta = inputs[3:]


def _scatter_bwd(ctx, grad):
    (indices,) = ctx.saved_tensors
    return scatter_backward_op(grad, indices, *ctx.meta), None, None, None, None, None, None


scatter_op.register_autograd(_scatter_bwd, setup_context=_scatter_setup)
