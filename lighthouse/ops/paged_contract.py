"""The input contract of paged decode attention (shapes, dtypes, devices), shared by the torch reference in
`paged_attention.py` and the Triton launcher in `triton/paged_decode.py`; it imports neither of them."""

from __future__ import annotations

import torch
from torch import Tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8 = torch.float8_e4m3fn  # a cache may store float8 e4m3 (scale 1): read as q's dtype
MIN_BLOCK, MAX_BLOCK = 16, 1024


def _is_pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


def _int32(name: str, t: Tensor, shape: tuple[int, ...], hint: str) -> None:
    if t.dtype != torch.int32:
        raise ValueError(f"{name} must be int32 (got {t.dtype}); pass {name}.to(torch.int32)")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} {hint} (got {tuple(t.shape)})")


def check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end) -> None:
    """Shapes, dtypes and devices of the contract (no data is read: safe inside CUDA-graph capture)."""
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be (B, H, D), one query per row, or (B, H, Q, D), the last Q entries of each row "
                         f"(got shape {tuple(q.shape)})")
    B, H, D = q.shape[0], q.shape[1], q.shape[-1]
    if k_cache.dim() != 4:
        raise ValueError(f"k_cache must be (num_blocks, block_size, H_kv, D) (got shape {tuple(k_cache.shape)})")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)} (got {tuple(v_cache.shape)})")
    _, BS, H_kv, Dk = k_cache.shape
    if Dk != D:
        raise ValueError(f"k_cache/v_cache head dim {Dk} != q's head dim {D}")
    if H_kv < 1 or H % H_kv:
        raise ValueError(f"q's heads H={H} must be a multiple of the cache's KV heads H_kv={H_kv} (GQA)")
    if q.dtype not in DTYPES:
        raise ValueError(f"q must be float16, bfloat16 or float32 (got {q.dtype})")
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (q.dtype, FP8):
        raise ValueError(f"q, k_cache, v_cache must share one dtype, or the caches both be float8_e4m3fn (scale 1) "
                         f"(got {q.dtype}, {k_cache.dtype}, {v_cache.dtype})")
    if not (_is_pow2(BS) and MIN_BLOCK <= BS <= MAX_BLOCK):
        raise ValueError(f"block_size (k_cache.shape[1]) must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}] "
                         f"(got {BS})")
    if block_tables.dim() != 2 or block_tables.shape[0] != B:
        raise ValueError(f"block_tables must be (B={B}, max_blocks) (got shape {tuple(block_tables.shape)})")
    _int32("block_tables", block_tables, tuple(block_tables.shape), "")
    _int32("seq_lens", seq_lens, (B,), "(entries per row)")
    _int32("per_head", per_head, (B,), "(0: full-cache row, 1: per-query-head row)")
    if (hole_start is None) != (hole_end is None):
        raise ValueError("pass hole_start and hole_end together, or neither")
    if hole_start is not None:
        _int32("hole_start", hole_start, (B, H), "(per row and query head)")
        _int32("hole_end", hole_end, (B,), "(per row)")
    for t in (k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end):
        if t is not None and t.device != q.device:
            raise ValueError(f"every tensor must be on q's device {q.device} (found one on {t.device})")


def check_row_capacity(block_tables: Tensor, seq_lens: Tensor, per_head: Tensor, group: int, block_size: int) -> None:
    """ValueError for a row whose slots (seq_lens, times `group` = H/H_kv on per-head rows) pass its table's
    end. Reads seq_lens on the host: for the torch paths, not the capturable Triton one."""
    lens = seq_lens.long()
    capacity = block_tables.shape[1] * block_size
    if lens.numel() and int(torch.where(per_head.bool(), lens * group, lens).max()) > capacity:
        raise ValueError(f"a row needs more than its table's {capacity} slots "
                         "(seq_lens[b], times H/H_kv on per_head rows): grow block_tables")
