"""RMSNorm, RoPE and SwiGLU's product: the one dispatch point between the fused Triton kernels and the torch reference.

Triton (`lighthouse.ops.triton.fused_norm_rope`, one kernel per call) when all hold:
  env LIGHTHOUSE_FUSED_KERNELS is not "0"; triton imports; the tensors are on CUDA; no autograd graph is needed
  (grad mode off, or no input requires grad); the kernel takes the shapes/dtypes (else it says why, logged once).
Otherwise the reference below: the model's torch code, so CPU runs and training are bit for bit what they were.
The Triton path equals the reference bit for bit for RoPE, and for RMSNorm up to the order of the fp32 sum of
squares (at most 1 ulp of the output, on few elements).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from lighthouse.ops.rope import apply_rope
from lighthouse.ops.triton_import import fallback_level, import_kernels

log = logging.getLogger(__name__)

ENV = "LIGHTHOUSE_FUSED_KERNELS"


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x (..., hidden), weight (hidden,): normalise in fp32, scale in x's dtype (HF's order of operations)."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rope_qk_ref(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """q (B, H, N, D), k (B, H_kv, N, D), cos/sin (B, 1, N, D) -> q, k rotated, in `dtype` (default q's)."""
    dtype = q.dtype if dtype is None else dtype
    return apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype)


@functools.lru_cache(maxsize=None)
def _kernels():
    """The Triton module, or why it is unavailable (a string)."""
    return import_kernels("lighthouse.ops.triton.fused_norm_rope")


def _on_device(x: Tensor) -> bool:
    return x.is_cuda  # tests patch this to run the kernels under Triton's CPU interpreter


@functools.lru_cache(maxsize=None)
def _log_fallback(op: str, reason: str) -> None:
    log.log(fallback_level(reason), "fused %s: torch path (%s)", op, reason)


def _triton_for(op: str, *tensors: Tensor):
    """The kernel module if `op` on `tensors` may take the Triton path (shapes not yet checked), else None."""
    if os.environ.get(ENV, "1").strip() == "0" or not _on_device(tensors[0]):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None  # the kernels have no backward
    kernels = _kernels()
    if isinstance(kernels, str):
        _log_fallback(op, kernels)
        return None
    return kernels


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x (..., hidden) bf16/fp16/fp32, weight (hidden,) -> weight * (x * rsqrt(mean(x^2) + eps)) as `rms_norm_ref`.

    The normalisation runs in fp32 and is rounded to x's dtype before the weight multiplies it (in the promoted
    dtype of the two). The fused kernel needs weight in x's dtype and hidden <= 8192."""
    kernels = _triton_for("rms_norm", x, weight)
    if kernels is not None:
        problem = kernels.rms_norm_problem(x, weight)
        if problem is None:
            return kernels.rms_norm(x, weight, eps)
        _log_fallback("rms_norm", problem)
    return rms_norm_ref(x, weight, eps)


def silu_mul_ref(x: Tensor) -> Tensor:
    """x (..., 2F) = [gate, up] -> silu(gate) * up (..., F): the MLP's torch code on a fused gate/up projection."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(x: Tensor) -> Tensor:
    """silu(gate) * up of x = [gate, up] (..., 2F), as `silu_mul_ref`: one kernel on CUDA inference (one pass over
    the fused gate/up output instead of three)."""
    kernels = _triton_for("silu_mul", x)
    if kernels is not None:
        problem = kernels.silu_mul_problem(x)
        if problem is None:
            return kernels.silu_mul(x)
        _log_fallback("silu_mul", problem)
    return silu_mul_ref(x)


def rope_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None,
            out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Rotary embedding of queries and keys (HF's rotate_half convention), as `rope_qk_ref`.

    q (B, H, N, D), k (B, H_kv, N, D), any strides (a transposed projection view is fine); cos/sin
    (B, 1, N, D) from `rope_cos_sin` (fp32, or the activation dtype). Every op rounds to the promotion of q's and
    cos's dtypes, the result to `dtype` (default q's). Outputs are laid out as torch lays out its own: token-major
    (B, N, H, D) in memory for a transposed projection view, so downstream `.transpose`/`.reshape` costs the same.
    `out` = (q_out, k_out): write the results there instead (q and k themselves for in place) and return them."""
    kernels = _triton_for("rope_qk", q, k, cos, sin)
    if kernels is not None:
        problem = kernels.rope_qk_problem(q, k, cos, sin, q.dtype if dtype is None else dtype)
        if problem is None:
            return kernels.rope_qk(q, k, cos, sin, dtype, out=out)
        _log_fallback("rope_qk", problem)
    q_rot, k_rot = rope_qk_ref(q, k, cos, sin, dtype)
    if out is None:
        return q_rot, k_rot
    out[0].copy_(q_rot)
    out[1].copy_(k_rot)
    return out
