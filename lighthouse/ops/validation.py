"""Argument checks and the length rule for Lighthouse attention.

Every check raises ValueError with a message that says what to change (never a bare assert).

Length rule (documented in the op's docstring): the selection needs, for L levels, pooling factor p and
budget topk (T = topk / 128 tiles):
  - p^(L-1) divides N (every level has whole windows),
  - T divides the coarsest length C = N / p^(L-1), and each tile's span C / T is a multiple of 64,
  - each tile's span holds at least 128 coarse entries, i.e. N >= p^(L-1) * topk.
Lengths that meet the minimum but not the divisibility are right-padded internally to the next multiple of
p^(L-1) * T * 64; padded positions never influence outputs before N (their scores are masked below every real
score and the value path is causal), and their outputs are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCORERS = ("norm", "dilated")
ROPE_MODES = ("before_pool", "after_select")  # where RoPE is applied (see lighthouse_ref's module docstring)
TILE_BUDGET = 128  # entries refined per tile per level (64 by query score + 64 by key score)
BATCH = TILE_BUDGET // 2
DILATION = 4


def _is_pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


def check_config(levels: int, pooling_factor: int, topk: int, scorer: str) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1 (got {levels!r}); 3 is the paper's setting")
    if not isinstance(pooling_factor, int) or isinstance(pooling_factor, bool) or pooling_factor < 2 or not _is_pow2(pooling_factor):
        raise ValueError(
            f"pooling_factor must be a power of two >= 2 (got {pooling_factor!r}); use 2, 4 or 8"
        )
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < TILE_BUDGET or topk % TILE_BUDGET:
        lo = max(TILE_BUDGET, (int(topk) // TILE_BUDGET) * TILE_BUDGET) if isinstance(topk, int) else TILE_BUDGET
        raise ValueError(
            f"topk must be a positive multiple of {TILE_BUDGET} (got {topk!r}); e.g. {lo} or {lo + TILE_BUDGET}"
        )
    if topk // 2 < pooling_factor:
        raise ValueError(f"topk/2 must be >= pooling_factor (got topk={topk}, pooling_factor={pooling_factor})")
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS} (got {scorer!r})")


def check_rope(rope: str, inv_freq: Tensor | None, position_offset, q: Tensor) -> None:
    """rope="before_pool": q/k come rotated, nothing else is needed (inv_freq / position_offset are ignored).
    rope="after_select": q/k come un-rotated; inv_freq (D/2,) floating and position_offset (an int >= 0, or a
    (B,) integer tensor) say how the op rotates the entries it gathered."""
    if rope not in ROPE_MODES:
        raise ValueError(f"rope must be one of {ROPE_MODES} (got {rope!r})")
    if rope == "before_pool":
        return
    D = q.shape[-1]
    if not isinstance(inv_freq, Tensor) or not inv_freq.is_floating_point() or tuple(inv_freq.shape) != (D // 2,):
        got = tuple(inv_freq.shape) if isinstance(inv_freq, Tensor) else type(inv_freq).__name__
        raise ValueError(
            f"rope='after_select' needs inv_freq=, the RoPE inverse frequencies to rotate with as a floating tensor of "
            f"shape (D/2,) = ({D // 2},) (got {got})"
        )
    if isinstance(position_offset, Tensor):
        if position_offset.is_floating_point() or tuple(position_offset.shape) != (q.shape[0],):
            raise ValueError(
                f"position_offset must be an int or a ({q.shape[0]},) integer tensor (one start position per batch "
                f"row); got {position_offset.dtype} {tuple(position_offset.shape)}"
            )
    elif not isinstance(position_offset, int) or isinstance(position_offset, bool) or position_offset < 0:
        raise ValueError(f"position_offset must be an int >= 0 or a (B,) integer tensor (got {position_offset!r})")


def min_seq_len(levels: int, pooling_factor: int, topk: int) -> int:
    """Shortest sequence the op accepts: every tile needs 128 coarse entries."""
    if levels == 1:
        return 1
    return pooling_factor ** (levels - 1) * topk


def padded_len(n: int, levels: int, pooling_factor: int, topk: int) -> int:
    """The length the op runs at: n rounded up to a multiple of p^(L-1) * (topk/128) * 64."""
    if levels == 1:
        return n
    unit = pooling_factor ** (levels - 1) * (topk // TILE_BUDGET) * BATCH
    return -(-n // unit) * unit


def check_inputs(q: Tensor, k: Tensor, v: Tensor, levels: int, pooling_factor: int, topk: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions (B, H, N, D); got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor (got {t.dtype})")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    B, H, N, D = q.shape
    if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D:
        raise ValueError(
            f"k/v must be (B, H_kv, N, D) = ({B}, H_kv, {N}, {D}) to match q {tuple(q.shape)}; got {tuple(k.shape)}"
        )
    H_kv = k.shape[1]
    if H_kv < 1 or H % H_kv:
        raise ValueError(f"the number of query heads ({H}) must be a multiple of the K/V heads ({H_kv})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype} (cast them first)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device}, {v.device}")
    need = min_seq_len(levels, pooling_factor, topk)
    if N < need:
        raise ValueError(
            f"sequence length {N} is too short for levels={levels}, pooling_factor={pooling_factor}, "
            f"topk={topk}: the minimum is {need} (= pooling_factor^(levels-1) * topk); "
            f"use dense attention below it, or a smaller topk/levels"
        )


def pad_seq(x: Tensor, n_pad: int) -> Tensor:
    """Right-pad (B, H, N, D) with zeros to n_pad along N (differentiable)."""
    n = x.shape[2]
    if n_pad == n:
        return x
    return torch.nn.functional.pad(x, (0, 0, 0, n_pad - n))
