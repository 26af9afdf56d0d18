"""Inner (dense) attention behind one small interface.

Backends, chosen once per call site by what is available:
- flash-attn's `flash_attn_func` when it is importable, the tensors are on CUDA and in fp16/bf16;
- else torch SDPA, with the cuDNN backend first on CUDA (cuDNN > Flash > Efficient > Math);
- on the CPU, SDPA's math path.

All functions take (B, H, N, D) tensors; K/V may have fewer heads (GQA, H % H_kv == 0).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

try:  # optional fast path
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - not installed on the CPU machine
    _flash_attn_func = None

_CUDA_BACKENDS = None


def _cuda_backends():
    global _CUDA_BACKENDS
    if _CUDA_BACKENDS is None:
        from torch.nn.attention import SDPBackend

        order = []
        for name in ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
            if hasattr(SDPBackend, name):
                order.append(getattr(SDPBackend, name))
        _CUDA_BACKENDS = order
    return _CUDA_BACKENDS


@functools.lru_cache(maxsize=None)
def _log_backend_once(name: str) -> None:
    log.info("dense attention backend: %s", name)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, H_kv, N, D) -> (B, H_kv * n_rep, N, D); query head h uses KV head h // n_rep (HF convention)."""
    if n_rep == 1:
        return x
    B, H_kv, N, D = x.shape
    return x[:, :, None].expand(B, H_kv, n_rep, N, D).reshape(B, H_kv * n_rep, N, D)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, attn_mask: Tensor | None = None) -> Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if q.is_cuda:
        from torch.nn.attention import sdpa_kernel

        _log_backend_once("torch SDPA (cuDNN first)")
        with sdpa_kernel(_cuda_backends(), set_priority=True):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    _log_backend_once("torch SDPA (CPU)")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


def _use_flash(q: Tensor) -> bool:
    return _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dense causal attention, scale 1/sqrt(D).

    q: (B, H, N, D); k, v: (B, H_kv, N, D) with H % H_kv == 0. Returns (B, H, N, D) in q's dtype.
    Position i attends to positions 0..i.
    """
    if _use_flash(q):
        _log_backend_once("flash-attn")
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)
    return _sdpa(q, k, v, is_causal=True)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """A few queries against a long cache, all keys visible: two matmuls and a float32 softmax.

    q: (B, H, Nq, D); k, v: (B, H_kv, Nk, D), possibly strided views into a larger cache buffer;
    attn_mask: None or bool broadcastable to (B, H, Nq, Nk), True = attend. Returns (B, H, Nq, D).
    Why not SDPA: its fused kernels parallelize over queries and heads, so one decode query over 512K keys
    keeps a handful of SMs busy; a batched GEMV reads the cache at memory bandwidth. GQA without repeating K/V.
    """
    B, H, Nq, D = q.shape
    H_kv = k.shape[1]
    r = H // H_kv
    qg = q.reshape(B, H_kv, r * Nq, D)  # query head h = g*r + j uses KV head g
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * (D**-0.5)  # (B, H_kv, r*Nq, Nk)
    if attn_mask is not None:
        mask = attn_mask.expand(B, H, Nq, k.shape[2]).reshape(B, H_kv, r * Nq, k.shape[2])
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).reshape(B, H, Nq, D)


def attention_with_cache(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of the last Nq positions against all Nk cached positions.

    q: (B, H, Nq, D) are positions Nk-Nq .. Nk-1; k, v: (B, H_kv, Nk, D) (Nk >= Nq).
    Bottom-right causal alignment: query j attends to keys 0 .. Nk-Nq+j. Returns (B, H, Nq, D).
    On CUDA (fp16/bf16) the keys before the queries and the queries' own square are two cuDNN calls merged by
    their log-sum-exp (no (Nq, Nk) mask: a 64K-query chunk of a 512K prompt stays at tensor-core speed).
    """
    Nq, Nk = q.shape[2], k.shape[2]
    if Nq > Nk:
        raise ValueError(f"attention_with_cache: {Nq} queries but only {Nk} keys; pass the cache including the queries' own K/V")
    if Nq == Nk:
        return causal_attention(q, k, v)
    if _use_flash(q):  # flash-attn aligns the causal mask bottom-right
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)
    if Nq == 1:
        if q.is_cuda:
            _log_backend_once("decode: matmul attention")
            return decode_attention(q, k, v)
        return _sdpa(q, k, v, is_causal=False)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _cudnn_lse_available():
        return _prefix_then_square(q, k, v)
    q_pos = torch.arange(Nk - Nq, Nk, device=q.device)[:, None]
    k_pos = torch.arange(Nk, device=q.device)[None, :]
    mask = k_pos <= q_pos  # (Nq, Nk) True = attend
    return _sdpa(q, k, v, is_causal=False, attn_mask=mask)


@functools.lru_cache(maxsize=None)
def _cudnn_lse_available() -> bool:
    return hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention")


def _cudnn_with_lse(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """cuDNN attention (B, H, Nq, D) and its log-sum-exp (B, H, Nq, 1) float32 (natural log, scaled scores)."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)
    return out[0], out[1].reshape(q.shape[0], q.shape[1], q.shape[2], 1)


def _prefix_then_square(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """attention_with_cache on CUDA: the keys before the queries (all visible) and the queries' own positions
    (top-left causal: the square's diagonal), merged by log-sum-exp in float32."""
    Nq, Nk = q.shape[2], k.shape[2]
    p = Nk - Nq
    _log_backend_once("prefill chunks: cuDNN, two calls merged by log-sum-exp")
    o1, l1 = _cudnn_with_lse(q, k[:, :, :p], v[:, :, :p], False)
    o2, l2 = _cudnn_with_lse(q, k[:, :, p:], v[:, :, p:], True)
    m = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)
