"""The one dispatch point for Lighthouse attention: Triton on CUDA, the pure-PyTorch reference elsewhere.

Choice, per call (logged once per distinct choice):
  backend="triton" | "torch" forces one; else env LIGHTHOUSE_ATTENTION_BACKEND=triton|torch; else "auto":
  Triton when triton imports, the tensors are on CUDA and the shape is supported (power-of-two head dim in
  [16, 256], pooling_factor <= 64), otherwise the reference. Forcing "triton" on CPU tensors works only under
  Triton's interpreter (TRITON_INTERPRET=1, used by the tests).
On the Triton path, calls that need no gradient take the forward-only path (no autograd state); others go
through the custom ops with autograd.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import Tensor

from lighthouse.ops.lighthouse_ref import lighthouse_attention as lighthouse_attention_ref
from lighthouse.ops.lighthouse_ref import lighthouse_attention_with_context as lighthouse_attention_with_context_ref
from lighthouse.ops.lighthouse_ref import lighthouse_select as lighthouse_select_ref
from lighthouse.ops.triton_import import fallback_level, import_kernels
from lighthouse.ops.validation import check_config, check_inputs, check_rope

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
ENV = "LIGHTHOUSE_ATTENTION_BACKEND"


@functools.lru_cache(maxsize=None)
def _triton_module():
    """The Triton implementation, or the reason it is unavailable (a string)."""
    return import_kernels("lighthouse.ops.triton")


def triton_available() -> bool:
    return not isinstance(_triton_module(), str)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _log_choice(name: str, reason: str) -> None:
    log.log(fallback_level(reason), "lighthouse attention backend: %s (%s)", name, reason)


def choose_backend(q: Tensor, pooling_factor: int, backend: str | None = None) -> tuple[str, str]:
    """(backend name, reason) for a call on q. Raises ValueError for an impossible explicit request."""
    requested = backend if backend is not None else os.environ.get(ENV, "auto").strip().lower() or "auto"
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (got {requested!r}; from {'argument' if backend else ENV})")
    if requested == "torch":
        return "torch", "requested"
    impl = _triton_module()
    ok_device = q.is_cuda or (_interpreting() and requested == "triton")
    ok = False
    if not isinstance(impl, str):
        from lighthouse.ops.triton.pool import supported  # noqa: PLC0415 - only with triton

        ok = ok_device and supported(q.shape[-1], pooling_factor)
    if requested == "triton":
        if isinstance(impl, str):
            raise ValueError(f"backend='triton' requested but {impl}")
        if not ok_device:
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
        if not ok:
            raise ValueError(f"backend='triton' does not support head dim {q.shape[-1]} / pooling_factor {pooling_factor}")
        return "triton", "requested"
    if isinstance(impl, str):
        return "torch", impl
    if not q.is_cuda:
        return "torch", f"tensors on {q.device.type}"
    if not ok:
        return "torch", f"shape not supported by the Triton path (D={q.shape[-1]}, p={pooling_factor})"
    return "triton", "CUDA"


def _checked_call(q, k, v, levels, pooling_factor, topk, scorer, backend, rope="before_pool", inv_freq=None,
                  position_offset=0) -> tuple[str, dict]:
    """Validate a call of the op and pick its backend: (backend name, the op's keyword arguments)."""
    check_config(levels, pooling_factor, topk, scorer)
    check_inputs(q, k, v, levels, pooling_factor, topk)
    check_rope(rope, inv_freq, position_offset, q)
    name, reason = choose_backend(q, pooling_factor, backend)
    _log_choice(name, reason)
    kwargs = dict(levels=levels, pooling_factor=pooling_factor, topk=topk, scorer=scorer)
    if rope != "before_pool":  # the published variant's calls stay exactly what they were
        kwargs.update(rope=rope, inv_freq=inv_freq, position_offset=position_offset)
    return name, kwargs


def lighthouse_attention(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
    backend: str | None = None,
) -> Tensor:
    """Lighthouse attention; the contract of `lighthouse_ref.lighthouse_attention` (read its docstring).

    q: (B, H, N, D); k, v: (B, H_kv, N, D). Returns (B, H, N, D) in q's dtype. backend: None (env, then auto),
    "auto", "triton" or "torch". Both backends select identical index sets; outputs agree within bf16 rounding.
    rope="after_select" (q/k un-rotated, inv_freq (D/2,), position_offset): RoPE after selection, on both backends.
    """
    name, kwargs = _checked_call(q, k, v, levels, pooling_factor, topk, scorer, backend, rope, inv_freq,
                                 position_offset)
    if name == "torch":
        return lighthouse_attention_ref(q, k, v, **kwargs)
    impl = _triton_module()
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad or torch.compiler.is_compiling():
        return impl.lighthouse_attention_triton(q, k, v, **kwargs)
    return impl.lighthouse_attention_triton_inference(q, k, v, **kwargs)


def lighthouse_select(
    q: Tensor, k: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    v: Tensor | None = None, backend: str | None = None,
) -> Tensor:
    """The selected pyramid indices, (B, H, S) int64 in causal order (see `lighthouse_ref.lighthouse_select`)."""
    name, reason = choose_backend(q, pooling_factor, backend)
    _log_choice(name, reason)
    kwargs = dict(levels=levels, pooling_factor=pooling_factor, topk=topk, scorer=scorer)
    if name == "torch":
        return lighthouse_select_ref(q, k, v=v, **kwargs)
    if scorer == "dilated" and v is None:
        raise ValueError("lighthouse_select(scorer='dilated') needs v=...")
    return _triton_module().lighthouse_select_triton(q, k, v, **kwargs)


@torch.no_grad()
def lighthouse_attention_with_context(
    q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int, scorer: str = "norm",
    rope: str = "before_pool", inv_freq: Tensor | None = None, position_offset: int | Tensor = 0,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward only: (out, k_sel, v_sel, indices), see `lighthouse_ref.lighthouse_attention_with_context`.
    The selected K/V are the ones the op gathered for its own inner attention (with rope="after_select", K
    rotated after selection): sparse decode keeps them."""
    name, kwargs = _checked_call(q, k, v, levels, pooling_factor, topk, scorer, backend, rope, inv_freq,
                                 position_offset)
    if name == "torch":
        return lighthouse_attention_with_context_ref(q, k, v, **kwargs)
    return _triton_module().lighthouse_attention_triton_inference(q, k, v, return_context=True, **kwargs)
