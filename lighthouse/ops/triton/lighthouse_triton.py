"""Lighthouse attention on the Triton kernels: the same function as `lighthouse_ref.lighthouse_attention`.

Two entry points with the reference's signature:
  - `lighthouse_attention_triton`: differentiable, built from the torch.library custom ops (traceable by
    torch.compile and CUDA graphs);
  - `lighthouse_attention_triton_inference`: forward only (prefill), the launchers called directly with no
    autograd bookkeeping and nothing saved.

Per call: pool+score Q and K (one pass each), pool V, select (cascade + per-tile sort + inverse map), gather,
causal attention over the S gathered entries, scatter. Padding to the selection's length unit is never
materialized (see geometry.Plan).

rope="after_select": the same kernels run on the un-rotated q/k; between the gather and the inner attention the
gathered q/k entries are rotated at their windows' last positions by the reference's own torch code
(`lighthouse_ref.rotate_selected`, float32, differentiable: autograd takes it between the gather op and the
attention), so both backends rotate with the same bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.ops.attention import causal_attention, repeat_kv
from lighthouse.ops.lighthouse_ref import dilated_scores, rotate_base, rotate_selected
from lighthouse.ops.triton import gather as _gather
from lighthouse.ops.triton import pool as _pool
from lighthouse.ops.triton import scatter as _scatter
from lighthouse.ops.triton import select as _select
from lighthouse.ops.triton.geometry import Plan
from lighthouse.ops.triton.ops import gather_op, pool_op, scatter_op, select_op
from lighthouse.ops.validation import check_config, check_inputs, check_rope, pad_seq


def resolve_order(x: Tensor, scores: str | int) -> int | None:
    """Which fused norm order to use: an int (a candidate in pool.CANDIDATE_ORDERS), or None for torch's norm."""
    if scores == "torch":
        return None
    if isinstance(scores, int):
        return scores
    if scores != "auto":
        raise ValueError(f"scores must be 'auto', 'torch' or an order in {_pool.CANDIDATE_ORDERS} (got {scores!r})")
    return _pool.norm_order(str(x.device), x.dtype, x.shape[-1])


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.no_grad()
def _selection(q: Tensor, k: Tensor, v: Tensor, plan: Plan, scorer: str, order: int | None, use_ops: bool):
    """Coarsest levels and the selection. Returns (cq, ck, cv, indices, inv)."""
    L, p, topk = plan.levels, plan.p, plan.topk
    q, k, v = q.detach(), k.detach(), v.detach()

    def pool(x: Tensor, o: int | None):
        if use_ops:
            coarse, scores = pool_op(x, L, p, topk, o if o is not None else 0)
            return coarse, (scores if o is not None else None)
        coarse, scores, _ = _pool.pool(x, plan, o)
        return coarse, scores

    n_rep = q.shape[1] // k.shape[1]
    if scorer == "norm" and order is not None:
        cq, s_q = pool(q, order)
        ck, s_k = pool(k, order)
        kq_rep = n_rep
    else:
        (cq, _), (ck, _) = pool(q, None), pool(k, None)
        if scorer == "norm":  # torch's own norm: the specification's bits on any device
            s_q, s_k = _pool.level_scores(q.norm(dim=-1), plan), _pool.level_scores(k.norm(dim=-1), plan)
            kq_rep = n_rep
        else:  # dilated: the reference's scorer on the padded, repeated tensors
            qp, kp, vp = (pad_seq(x, plan.n_run) for x in (q, repeat_kv(k, n_rep), repeat_kv(v, n_rep)))
            a, b = dilated_scores(qp, kp, vp)
            n = plan.n_valid
            s_q, s_k = _pool.level_scores(a[..., :n], plan), _pool.level_scores(b[..., :n], plan)
            kq_rep = 1
    cv, _ = pool(v, None)
    if use_ops:
        indices, inv = select_op(s_q, s_k, plan.n_valid, L, p, topk, kq_rep)
    else:
        indices, inv = _select.select(s_q, s_k, plan, kq_rep)
    return cq, ck, cv, indices, inv


def _prepare(q, k, v, levels, pooling_factor, topk, scorer, rope="before_pool", inv_freq=None, position_offset=0):
    check_config(levels, pooling_factor, topk, scorer)
    check_inputs(q, k, v, levels, pooling_factor, topk)
    check_rope(rope, inv_freq, position_offset, q)
    if not _pool.supported(q.shape[-1], pooling_factor):
        raise ValueError(
            f"the Triton path needs a power-of-two head dim in [16, 256] and pooling_factor <= {_pool.ROWS} "
            f"(got D={q.shape[-1]}, pooling_factor={pooling_factor}); use backend='torch'"
        )
    return _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)


def lighthouse_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
    scores: str | int = "auto",
) -> Tensor:
    """Lighthouse attention, differentiable. Same contract as `lighthouse_ref.lighthouse_attention`
    (shapes (B, H, N, D) / (B, H_kv, N, D), length rule, causality notes, rope / inv_freq / position_offset);
    returns (B, H, N, D) in q's dtype.

    scores: how norm scores are computed: "auto" (fused in the pooling pass when its order reproduces torch's
    bits on this device, else torch's norm), "torch", or a fused order (tests).
    """
    q, k, v = _prepare(q, k, v, levels, pooling_factor, topk, scorer, rope, inv_freq, position_offset)
    after_select = rope == "after_select"
    if levels == 1:
        if after_select:
            q, k = rotate_base(q, k, inv_freq, position_offset)
        return causal_attention(q, k, v)
    plan = Plan.make(q.shape[2], levels, pooling_factor, topk)
    order = resolve_order(q, scores) if scorer == "norm" else None
    cq, ck, cv, indices, inv = _selection(q, k, v, plan, scorer, order, use_ops=True)
    qs, ks, vs = gather_op(q, k, v, cq, ck, cv, indices, inv, levels, pooling_factor, topk)
    if after_select:
        qs, ks = rotate_selected(qs, ks, indices, plan.n_run, levels, pooling_factor, inv_freq, position_offset)
    o_sel = causal_attention(qs, ks, vs)
    return scatter_op(o_sel, inv, indices, plan.n_valid, levels, pooling_factor, topk)


@torch.no_grad()
def lighthouse_attention_triton_inference(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
    scores: str | int = "auto", return_context: bool = False,
):
    """Forward only (prefill): the same output as `lighthouse_attention_triton`, no autograd state.
    return_context: also return the gathered (B, H, S, D) K (rotated, with rope="after_select") and V and the
    (B, H, S) indices, as `lighthouse_ref.lighthouse_attention_with_context` (levels >= 2)."""
    q, k, v = _prepare(q, k, v, levels, pooling_factor, topk, scorer, rope, inv_freq, position_offset)
    after_select = rope == "after_select"
    if levels == 1:
        if return_context:
            raise ValueError("return_context needs levels >= 2 (levels=1 selects every position)")
        if after_select:
            q, k = rotate_base(q, k, inv_freq, position_offset)
        return causal_attention(q, k, v)
    plan = Plan.make(q.shape[2], levels, pooling_factor, topk)
    order = resolve_order(q, scores) if scorer == "norm" else None
    cq, ck, cv, indices, inv = _selection(q, k, v, plan, scorer, order, use_ops=False)
    qs, ks, vs = _gather.gather(q, k, v, cq, ck, cv, indices, plan)
    del cq, ck, cv
    if after_select:
        qs, ks = rotate_selected(qs, ks, indices, plan.n_run, levels, pooling_factor, inv_freq, position_offset)
    o_sel = causal_attention(qs, ks, vs)
    del qs
    out = _scatter.scatter(o_sel, inv, plan)
    return (out, ks, vs, indices) if return_context else out


@torch.no_grad()
def lighthouse_select_triton(
    q: Tensor, k: Tensor, v: Tensor | None = None, *, levels: int, pooling_factor: int, topk: int,
    scorer: str = "norm", scores: str | int = "auto",
) -> Tensor:
    """(B, H, S) int64 pyramid indices in causal order, as `lighthouse_ref.lighthouse_select`."""
    v = k if v is None else v
    q, k, v = _prepare(q, k, v, levels, pooling_factor, topk, scorer)
    if levels == 1:
        n = q.shape[2]
        return torch.arange(n, device=q.device).expand(q.shape[0], q.shape[1], n)
    plan = Plan.make(q.shape[2], levels, pooling_factor, topk)
    order = resolve_order(q, scores) if scorer == "norm" else None
    return _selection(q, k, v, plan, scorer, order, use_ops=False)[3]
