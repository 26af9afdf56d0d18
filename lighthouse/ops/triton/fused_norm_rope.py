"""RMSNorm, RoPE and SwiGLU's product as one Triton kernel each: the fast path of `lighthouse.ops.fused` (read it
for the contract).

The torch code they replace runs ~8 elementwise kernels per RMSNorm and ~6 per RoPE'd tensor; in the decode step
those launches, not the bytes moved, are the cost. Both kernels compute what the torch reference computes, with
the same roundings in the same places:
  rms_norm: h = x in fp32; h * rsqrt(mean(h^2) + eps); rounded to x's dtype; times weight in fp32, rounded again.
            Only the order of the fp32 sum of squares differs (at most 1 ulp of the output, on few elements).
  rope_qk:  x * cos + rotate_half(x) * sin with both products and the sum each rounded to the dtype torch would
            compute in (the promotion of x's and cos's dtypes), then to the output dtype: bit for bit. fp-fusion
            is off so that the fp32 case is not contracted into an fma either.
  silu_mul: silu(gate) in fp32 rounded to the dtype, times up in fp32, rounded: torch's two ops in one pass. Its
            exp and division are not torch's to the last fp32 bit, so a few outputs differ by an ulp or two in
            16-bit dtypes (up to ~8 in fp32); within the dtype's default tolerance (tests/ops/test_fused_norm_rope.py).
Launchers check shapes, strides and dtypes only (no host sync: they run inside CUDA-graph capture).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_HIDDEN = 8192  # rms_norm: one row is one block of registers
MAX_TILE = 16384  # rope_qk: heads x D/2 elements held per tensor per program
FLOATS = (torch.bfloat16, torch.float16, torch.float32)
_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, o_ptr, sx_row, so_row, HIDDEN, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK)
    m = d < HIDDEN
    x = tl.load(x_ptr + row * sx_row + d, mask=m, other=0.0).to(tl.float32)
    var = tl.sum(x * x, axis=0) / HIDDEN
    h = (x * tl.rsqrt(var + eps)).to(o_ptr.dtype.element_ty).to(tl.float32)  # rounded like h.to(dtype)
    w = tl.load(w_ptr + d, mask=m, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * so_row + d, (w * h).to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _round(x, CT: tl.constexpr):
    """fp32 x rounded to CT and back: torch rounds every op's result to the dtype it computes in."""
    return x.to(CT).to(tl.float32)


@triton.jit
def _rope_heads(x_ptr, o_ptr, sx_h, so_h, H, c1, c2, s1, s2,
                HALF: tl.constexpr, H_PAD: tl.constexpr, HALF_PAD: tl.constexpr, CT: tl.constexpr):
    """Rotates the H heads of one token; x_ptr/o_ptr point at its head 0, d = 0; c1..s2 (1, HALF_PAD) fp32."""
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, HALF_PAD)[None, :]
    m = (h < H) & (d < HALF)
    x = x_ptr + h * sx_h + d
    x1 = tl.load(x, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x + HALF, mask=m, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1); negation is exact in every dtype
    o1 = _round(_round(x1 * c1, CT) - _round(x2 * s1, CT), CT)
    o2 = _round(_round(x2 * c2, CT) + _round(x1 * s2, CT), CT)
    o = o_ptr + h * so_h + d
    tl.store(o, o1.to(o_ptr.dtype.element_ty), mask=m)
    tl.store(o + HALF, o2.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_qk_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, N, H, H_KV,
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sqo_b, sqo_h, sqo_n, sko_b, sko_h, sko_n, sc_b, sc_n, ss_b, ss_n,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, H_PAD: tl.constexpr, HKV_PAD: tl.constexpr, CT: tl.constexpr,
):
    """One program per token (b, n): its cos/sin row is read once for the H query and H_kv key heads."""
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    d = tl.arange(0, HALF_PAD)
    dm = d < HALF
    c = cos_ptr + b * sc_b + n * sc_n + d
    s = sin_ptr + b * ss_b + n * ss_n + d
    c1 = tl.load(c, mask=dm, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(c + HALF, mask=dm, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(s, mask=dm, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(s + HALF, mask=dm, other=0.0).to(tl.float32)[None, :]
    _rope_heads(q_ptr + b * sq_b + n * sq_n, qo_ptr + b * sqo_b + n * sqo_n, sq_h, sqo_h, H, c1, c2, s1, s2,
                HALF, H_PAD, HALF_PAD, CT)
    _rope_heads(k_ptr + b * sk_b + n * sk_n, ko_ptr + b * sko_b + n * sko_n, sk_h, sko_h, H_KV, c1, c2, s1, s2,
                HALF, HKV_PAD, HALF_PAD, CT)


@triton.jit
def _silu_mul_kernel(x_ptr, o_ptr, n_cols, sx_row, so_row, BLOCK: tl.constexpr):
    """Row r: out[r, c] = silu(x[r, c]) * x[r, n_cols + c] for the columns of this program's block."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < n_cols
    g = tl.load(x_ptr + row * sx_row + c, mask=m, other=0.0).to(tl.float32)
    u = tl.load(x_ptr + row * sx_row + n_cols + c, mask=m, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(o_ptr.dtype.element_ty).to(tl.float32)  # silu, rounded as torch rounds it
    tl.store(o_ptr + row * so_row + c, (s * u).to(o_ptr.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------------------- launchers
def silu_mul_problem(x: Tensor) -> str | None:
    """Why `silu_mul` cannot take x (what to change), or None."""
    if x.dtype not in FLOATS:
        return f"x must be one of {FLOATS} (got {x.dtype})"
    if x.shape[-1] % 2:
        return f"the last dim must be even: [gate, up] (got {x.shape[-1]})"
    if x.stride(-1) != 1:
        return "x must be contiguous in the last dim; pass x.contiguous()"
    return None


def silu_mul(x: Tensor) -> Tensor:
    """x (..., 2F) = [gate, up] -> silu(gate) * up (..., F) in x's dtype, contiguous."""
    if (problem := silu_mul_problem(x)) is not None:
        raise ValueError(f"silu_mul: {problem}")
    F2 = x.shape[-1]
    x2 = x.reshape(-1, F2)
    out = torch.empty(*x.shape[:-1], F2 // 2, dtype=x.dtype, device=x.device)
    if x2.shape[0] == 0 or F2 == 0:
        return out
    block = min(1024, triton.next_power_of_2(F2 // 2))
    grid = (x2.shape[0], triton.cdiv(F2 // 2, block))
    _silu_mul_kernel[grid](x2, out, F2 // 2, x2.stride(0), F2 // 2, BLOCK=block, num_warps=4)
    return out



def rms_norm_problem(x: Tensor, weight: Tensor) -> str | None:
    """Why `rms_norm` cannot take these inputs (what to change), or None."""
    if x.dim() < 1 or weight.shape != x.shape[-1:]:
        return f"weight must have shape (hidden,) = ({x.shape[-1] if x.dim() else '?'},) (got {tuple(weight.shape)})"
    if x.dtype not in FLOATS or weight.dtype != x.dtype:
        return f"x and weight must share one dtype of {FLOATS} (got {x.dtype}, {weight.dtype}); cast the weight"
    if x.shape[-1] > MAX_HIDDEN:
        return f"hidden size {x.shape[-1]} > {MAX_HIDDEN}: use the torch path"
    if x.stride(-1) != 1 or weight.stride(-1) != 1:
        return "x and weight must be contiguous in the last dim; pass x.contiguous()"
    if weight.device != x.device:
        return f"weight is on {weight.device}, x on {x.device}"
    return None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x (..., hidden) bf16/fp16/fp32, weight (hidden,) same dtype -> (..., hidden) contiguous, x's dtype."""
    if (problem := rms_norm_problem(x, weight)) is not None:
        raise ValueError(f"rms_norm: {problem}")
    hidden = x.shape[-1]
    x2 = x.reshape(-1, hidden)  # (rows, hidden); a view for every layout the model produces
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x2.shape[0]
    if rows == 0 or hidden == 0:
        return out
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(rows,)](x2, weight, out, x2.stride(0), hidden, hidden, float(eps), BLOCK=block,
                              num_warps=min(16, max(1, block // 512)))
    return out


def rope_qk_problem(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype) -> str | None:
    """Why `rope_qk` cannot take these inputs (what to change), or None."""
    if q.dim() != 4 or k.dim() != 4:
        return f"q and k must be (B, H, N, D) and (B, H_kv, N, D) (got {tuple(q.shape)}, {tuple(k.shape)})"
    B, _, N, D = q.shape
    if k.shape[0] != B or k.shape[2:] != q.shape[2:] or D % 2:
        return f"k must be (B, H_kv, N, D) with q's B, N and an even D (got q {tuple(q.shape)}, k {tuple(k.shape)})"
    if cos.shape != sin.shape or cos.dim() != 4 or cos.shape[0] not in (1, B) or cos.shape[1:] != (1, N, D):
        return f"cos and sin must be (B or 1, 1, N, D) = (B, 1, {N}, {D}) (got {tuple(cos.shape)}, {tuple(sin.shape)})"
    if q.dtype not in FLOATS or k.dtype != q.dtype or cos.dtype not in FLOATS or sin.dtype != cos.dtype:
        return (f"q, k must share a dtype of {FLOATS}, and cos, sin too "
                f"(got {q.dtype}, {k.dtype}, {cos.dtype}, {sin.dtype})")
    if dtype not in FLOATS:
        return f"the output dtype must be one of {FLOATS} (got {dtype})"
    if any(t.stride(-1) != 1 for t in (q, k, cos, sin)):
        return "q, k, cos and sin must be contiguous in the last dim (D); pass .contiguous()"
    if any(t.device != q.device for t in (k, cos, sin)):
        return "q, k, cos and sin must be on one device"
    if triton.next_power_of_2(max(q.shape[1], k.shape[1])) * triton.next_power_of_2(D // 2) > MAX_TILE:
        return f"{max(q.shape[1], k.shape[1])} heads of dim {D} exceed one program's tile: use the torch path"
    return None


def _empty_like_layout(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, H, N, D) in x's order of heads and tokens, as torch's elementwise ops lay out their output."""
    B, H, N, D = x.shape
    if N > 1 and x.stride(1) < x.stride(2):  # heads inside tokens (a transposed projection): (B, N, H, D) in memory
        return torch.empty(B, N, H, D, dtype=dtype, device=x.device).transpose(1, 2)
    return torch.empty(B, H, N, D, dtype=dtype, device=x.device)


def rope_qk(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, dtype: torch.dtype | None = None,
            out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """q (B, H, N, D), k (B, H_kv, N, D) any strides with D contiguous; cos/sin (B or 1, 1, N, D).

    Returns q, k rotated (HF's rotate_half convention) in `dtype` (default q's), each token-major (B, N, H, D) in
    memory when its input is (a projection's transposed view) and contiguous otherwise, as torch's own ops would
    lay it out; exactly `apply_rope(x, cos, sin).to(dtype)`. `out`: (q_out, k_out) of q's and k's shapes in
    `dtype`, any strides with D contiguous, written and returned; q and k themselves are allowed (in place: each
    program reads its token's heads whole before it writes them)."""
    dtype = q.dtype if dtype is None else dtype
    if (problem := rope_qk_problem(q, k, cos, sin, dtype)) is not None:
        raise ValueError(f"rope_qk: {problem}")
    B, H, N, D = q.shape
    H_kv = k.shape[1]
    if out is not None:
        q_out, k_out = out
        if q_out.shape != q.shape or k_out.shape != k.shape or {q_out.dtype, k_out.dtype} != {dtype} \
                or q_out.stride(-1) != 1 or k_out.stride(-1) != 1:
            raise ValueError("rope_qk: out must be (q-shaped, k-shaped) tensors in the output dtype, D contiguous")
    else:
        q_out, k_out = _empty_like_layout(q, dtype), _empty_like_layout(k, dtype)
    if B * N == 0 or D == 0:
        return q_out, k_out
    cos, sin = cos.expand(B, 1, N, D), sin.expand(B, 1, N, D)  # a broadcast batch has stride 0
    ct = _TL[torch.promote_types(q.dtype, cos.dtype)]  # the dtype torch computes x * cos in
    half = D // 2
    tile = triton.next_power_of_2(max(H, H_kv)) * triton.next_power_of_2(half)
    _rope_qk_kernel[(B * N,)](
        q, k, cos, sin, q_out, k_out, N, H, H_kv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos.stride(0), cos.stride(2), sin.stride(0), sin.stride(2),
        HALF=half, HALF_PAD=triton.next_power_of_2(half), H_PAD=triton.next_power_of_2(H),
        HKV_PAD=triton.next_power_of_2(H_kv), CT=ct, num_warps=4 if tile <= 4096 else 8, enable_fp_fusion=False,
    )
    return q_out, k_out
