"""The pool: the cache tensors, and the reads, writes and copies of their slots.

`pool.k` and `pool.v` are (num_blocks, block_size, H_kv, D) tensors. Layer i's position t of a sequence lives at
block `table[t // block_size]`, offset `t % block_size` (its *slot* is block * block_size + offset); a context
table's entry e of query head h = g*r + j (r = H / H_kv) lives at slot e*r + j, KV head g (spec.py).

The pool may store K/V in float8 (e4m3, `--kv-cache-dtype fp8_e4m3`): half the bytes per position of bf16.
Values are cast with a per-tensor scale of 1 (no calibration; what vLLM does without scales), saturating at
+-448: e4m3 keeps 3 mantissa bits, so a stored value is within 2^-4 of the original, relative, from 2^-6 up, and
within 2^-10 absolute below. Reads (`read`, `gather`, the paged kernel) convert back to the model's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lighthouse.engine.cache.spec import CacheShape

FP8 = torch.float8_e4m3fn
KV_CACHE_DTYPES = {"auto": None, "fp8_e4m3": FP8}  # the engine's `kv_cache_dtype` names
FP8_MAX = 448.0


def padded_tables(rows: list[list[int]]) -> Tensor:
    """Block tables as the paged kernels take them: (len(rows), longest) int32 on the host, zeros past a shorter row
    (never read: a kernel stops at the row's length)."""
    table = torch.zeros(len(rows), max((len(t) for t in rows), default=0), dtype=torch.int32)
    for i, row in enumerate(rows):
        table[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return table


def as_bytes(x: Tensor) -> Tensor:
    """A float8 tensor as uint8 (index kernels have no float8 versions everywhere), others as they are."""
    return x.view(torch.uint8) if x.dtype == FP8 else x


def quantize_fp8(x: Tensor) -> Tensor:
    """x in any float dtype -> float8 e4m3 (scale 1), saturating at +-448 (a plain cast would give NaN)."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


class KVPool:
    """The cache tensors and the copies between blocks."""

    def __init__(self, shape: CacheShape, num_blocks: int):
        s = shape
        dims = (num_blocks, s.block_size, s.num_kv_heads, s.head_dim)
        self.shape = shape
        self.k = torch.empty(dims, dtype=s.storage_dtype, device=s.device)
        self.v = torch.empty(dims, dtype=s.storage_dtype, device=s.device)
        self.fp8 = s.storage_dtype == FP8

    def slots(self, blocks: list[int] | Tensor, start: int, end: int, stride: int = 1) -> Tensor:
        """(end - start,) int64 slot ids of entries [start, end) of a table (entry e at slot e*stride)."""
        bs = self.shape.block_size
        table = blocks if isinstance(blocks, Tensor) else torch.tensor(blocks, dtype=torch.long)
        table = table.to(self.k.device, torch.long)
        e = torch.arange(start, end, device=self.k.device) * stride
        return table[e // bs] * bs + e % bs

    def write(self, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """k, v: (n, H_kv, D) rows into `slots` (n,)."""
        flat_k = self.k.view(-1, *self.k.shape[-2:])
        flat_v = self.v.view(-1, *self.v.shape[-2:])
        if self.fp8:  # index_copy_ has no float8 kernels: copy the bytes
            as_bytes(flat_k).index_copy_(0, slots, as_bytes(quantize_fp8(k)))
            as_bytes(flat_v).index_copy_(0, slots, as_bytes(quantize_fp8(v)))
            return
        flat_k.index_copy_(0, slots, k.to(flat_k.dtype))
        flat_v.index_copy_(0, slots, v.to(flat_v.dtype))

    def gather(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """The (n, H_kv, D) K and V rows of `slots` (n,), in the model's dtype."""
        k, v = (as_bytes(t.view(-1, *t.shape[-2:])).index_select(0, slots).view(t.dtype) for t in (self.k, self.v))
        if self.fp8:
            k, v = k.to(self.shape.dtype), v.to(self.shape.dtype)
        return k, v

    def read(self, blocks: list[int], n: int) -> tuple[Tensor, Tensor]:
        """Positions [0, n) of one layer's table as (1, H_kv, n, D) K and V in the model's dtype: a view when the
        blocks are consecutive (and the pool is not float8), else a copy."""
        nb = math.ceil(n / self.shape.block_size)
        first = blocks[0] if blocks else 0
        if nb and blocks[:nb] == list(range(first, first + nb)):
            k = self.k[first : first + nb].flatten(0, 1)[:n]
            v = self.v[first : first + nb].flatten(0, 1)[:n]
        else:
            idx = torch.tensor(blocks[:nb], dtype=torch.long, device=self.k.device)
            k, v = (as_bytes(t).index_select(0, idx).view(t.dtype).flatten(0, 1)[:n] for t in (self.k, self.v))
        if self.fp8:
            k, v = k.to(self.shape.dtype), v.to(self.shape.dtype)
        return k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # (1, H_kv, n, D), strided

    def copy_block(self, src: int, dst: int, n: int) -> None:
        """The first n slots of block src into block dst."""
        self.k[dst, :n].copy_(self.k[src, :n])
        self.v[dst, :n].copy_(self.v[src, :n])

