"""Rotary position embeddings with HF Llama's convention (rotate_half over two contiguous halves).

Supported `rope_scaling` types: none/"default", "linear", and "llama3" (Llama 3.1's frequency-dependent
scaling: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings).
cos/sin are computed in fp32 and cast to the activation dtype, as transformers does.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor


class RopeConfig(Protocol):
    """What the frequencies are made from: a model config's fields (lighthouse.model.ModelConfig has them all)."""

    head_dim: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    rope_type: str
    lighthouse: Any  # its rope_freqs ("model" | "unscaled") picks `lighthouse_inv_freq`


def unscaled_inv_freq(config: RopeConfig) -> Tensor:
    """(head_dim // 2,) fp32 inverse frequencies 1 / rope_theta^(2i/head_dim), rope_scaling ignored."""
    dim = config.head_dim
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def rope_inv_freq(config: RopeConfig) -> Tensor:
    """(head_dim // 2,) fp32 inverse frequencies, after any rope_scaling."""
    inv_freq = unscaled_inv_freq(config)
    rope_type = config.rope_type
    if rope_type == "default":
        return inv_freq
    scaling = config.rope_scaling
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        return _llama3_scale(inv_freq, scaling)
    raise ValueError(f"unsupported rope_scaling type {rope_type!r}")


def lighthouse_inv_freq(config: RopeConfig) -> Tensor:
    """(head_dim // 2,) fp32: the frequencies the Lighthouse layers rotate with under lighthouse.rope =
    "after_select" (the op's entries; sparse decode's query, keys and tail): the model's (rope_inv_freq) with
    lighthouse.rope_freqs = "model", rope_theta's alone (unscaled_inv_freq) with "unscaled"."""
    if config.lighthouse.rope_freqs == "unscaled":
        return unscaled_inv_freq(config)
    return rope_inv_freq(config)


def _llama3_scale(inv_freq: Tensor, s: dict) -> Tensor:
    factor = float(s["factor"])
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths are slowed by `factor`, short ones kept, the band between interpolated smoothly
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions (B, N) int -> cos, sin (B, 1, N, head_dim) in `dtype`."""
    freqs = positions[..., None].float() * inv_freq.float().to(positions.device)  # (B, N, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, N, D); cos/sin (B, 1, N, D)."""
    return x * cos + _rotate_half(x) * sin
