"""Paged KV cache: one pool of fixed-size blocks per layer, block tables per sequence, reference counts.

Layout: `pool.k[i]` and `pool.v[i]` are layer i's (num_blocks, block_size, H_kv, D) tensors (views of one
(L, num_blocks, block_size, H_kv, D) tensor each). A sequence's position t lives in every layer at block
`blocks[t // block_size]`, offset `t % block_size` (its *slot* is block * block_size + offset).

A sequence that decodes sparsely also has a context table (`ctx_blocks`): per Lighthouse layer, the prompt's
selected entries (one set per query head) plus every later position. Entry e of query head h = g*r + j
(r = H / H_kv) is stored at slot e*r + j, KV head g, so it occupies the same pool as the full cache, in the
same blocks of every layer (the paged decode kernel reads either kind, `per_head` says which).

Blocks are shared by reference (the prefix cache, the n choices of one request): a block's count is the number
of tables holding it, and it returns to the free list at zero. Shared blocks are never written: a sequence
that continues from a shared prefix copies the partly filled last block first (copy on write, `fork`).
Block 0 is a scratch block that is never handed out: padding rows of a captured decode batch write there.

The pool may store K/V in float8 (e4m3, `--kv-cache-dtype fp8_e4m3`): half the bytes per position of bf16.
Values are cast with a per-tensor scale of 1 (no calibration; what vLLM does without scales), saturating at
+-448: e4m3 keeps 3 mantissa bits, so a stored value is within 2^-4 of the original, relative, from 2^-6 up, and
within 2^-10 absolute below. Reads (`read`, the paged kernel) convert back to the model's dtype.

Admission reserves, in blocks, everything a sequence will hold (prompt + max_tokens, plus its sparse-decode
context), so a running sequence never runs out of cache and a request that could never fit is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

SCRATCH_BLOCK = 0


@dataclass(frozen=True)
class CacheShape:
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int
    dtype: torch.dtype  # the model's: what reads return
    device: torch.device
    block_size: int = 128
    cache_dtype: torch.dtype | None = None  # what the pool stores (None: dtype; or torch.float8_e4m3fn)

    @property
    def storage_dtype(self) -> torch.dtype:
        return self.dtype if self.cache_dtype is None else self.cache_dtype

    @property
    def group(self) -> int:
        """r: query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @property
    def bytes_per_token(self) -> int:
        """K and V for one position in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _itemsize(self.storage_dtype)

    @property
    def bytes_per_block(self) -> int:
        return self.block_size * self.bytes_per_token

    def blocks_for(self, positions: int) -> int:
        return math.ceil(positions / self.block_size)

    def ctx_blocks_for(self, entries: int) -> int:
        """Blocks of a sparse-decode context of `entries` entries per query head."""
        return math.ceil(entries * self.group / self.block_size)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


FP8 = torch.float8_e4m3fn
KV_CACHE_DTYPES = {"auto": None, "fp8_e4m3": FP8}  # the engine's `kv_cache_dtype` names
FP8_MAX = 448.0


def as_bytes(x: Tensor) -> Tensor:
    """A float8 tensor as uint8 (index kernels have no float8 versions everywhere), others as they are."""
    return x.view(torch.uint8) if x.dtype == FP8 else x


def quantize_fp8(x: Tensor) -> Tensor:
    """x in any float dtype -> float8 e4m3 (scale 1), saturating at +-448 (a plain cast would give NaN)."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


@dataclass
class SequenceKV:
    """One sequence's view of the pool: its block tables and how much of them is filled."""

    blocks: list[int]  # full cache, every layer
    length: int = 0  # positions written
    ctx_blocks: list[int] = field(default_factory=list)  # sparse-decode context (Lighthouse layers), or empty
    ctx_len: int = 0  # context entries written (per query head)
    ctx_hole_start: Tensor | None = None  # (H,) int32: entries [hole_start[h], ctx_hole_end) are op padding
    ctx_hole_end: int = 0
    table: Tensor | None = None  # (len(blocks),) int32 on the device, made on first use
    ctx_table: Tensor | None = None

    @property
    def sparse(self) -> bool:
        return bool(self.ctx_blocks)

    def all_blocks(self) -> list[int]:
        return self.blocks + self.ctx_blocks


class BlockAllocator:
    """Free list and reference counts of blocks 1..num_blocks-1 (block 0 is scratch)."""

    def __init__(self, num_blocks: int):
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks, got {num_blocks}; raise the KV cache budget")
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self._free = list(range(num_blocks - 1, SCRATCH_BLOCK, -1))  # pop() hands out low ids first

    @property
    def usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"{n} KV cache blocks requested, {len(self._free)} free")
        out = [self._free.pop() for _ in range(n)]
        for b in out:
            self.refs[b] = 1
        return out

    def share(self, blocks: list[int]) -> list[int]:
        for b in blocks:
            assert self.refs[b] > 0, f"block {b} is free"
            self.refs[b] += 1
        return list(blocks)

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            assert self.refs[b] >= 0, f"block {b} released twice"
            if self.refs[b] == 0:
                self._free.append(b)


class KVPool:
    """The cache tensors and the copies between blocks."""

    def __init__(self, shape: CacheShape, num_blocks: int):
        s = shape
        dims = (s.num_layers, num_blocks, s.block_size, s.num_kv_heads, s.head_dim)
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

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """k, v: (n, H_kv, D) rows into `slots` (n,) of layer `layer`."""
        flat_k = self.k[layer].view(-1, *self.k.shape[-2:])
        flat_v = self.v[layer].view(-1, *self.v.shape[-2:])
        if self.fp8:  # index_copy_ has no float8 kernels: copy the bytes
            as_bytes(flat_k).index_copy_(0, slots, as_bytes(quantize_fp8(k)))
            as_bytes(flat_v).index_copy_(0, slots, as_bytes(quantize_fp8(v)))
            return
        flat_k.index_copy_(0, slots, k.to(flat_k.dtype))
        flat_v.index_copy_(0, slots, v.to(flat_v.dtype))

    def read(self, layer: int, blocks: list[int], n: int) -> tuple[Tensor, Tensor]:
        """Positions [0, n) of a table as (1, H_kv, n, D) K and V in the model's dtype: a view when the blocks are
        consecutive (and the pool is not float8), else a copy."""
        nb = math.ceil(n / self.shape.block_size)
        first = blocks[0] if blocks else 0
        if nb and blocks[:nb] == list(range(first, first + nb)):
            k = self.k[layer, first : first + nb].flatten(0, 1)[:n]
            v = self.v[layer, first : first + nb].flatten(0, 1)[:n]
        else:
            idx = torch.tensor(blocks[:nb], dtype=torch.long, device=self.k.device)
            k, v = (as_bytes(t[layer]).index_select(0, idx).view(t.dtype).flatten(0, 1)[:n] for t in (self.k, self.v))
        if self.fp8:
            k, v = k.to(self.shape.dtype), v.to(self.shape.dtype)
        return k.transpose(0, 1)[None], v.transpose(0, 1)[None]  # (1, H_kv, n, D), strided

    def copy_block(self, src: int, dst: int, n: int) -> None:
        """The first n slots of block src into block dst, in every layer."""
        self.k[:, dst, :n].copy_(self.k[:, src, :n])
        self.v[:, dst, :n].copy_(self.v[:, src, :n])


class KVCacheManager:
    """The budget in blocks, per-sequence reservations, sharing, and the pool."""

    def __init__(self, shape: CacheShape, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"KV cache budget must be positive, got {budget_bytes} bytes")
        self.shape = shape
        num_blocks = budget_bytes // shape.bytes_per_block
        if num_blocks < 2:
            raise ValueError(f"a KV cache budget of {budget_bytes} bytes holds {num_blocks} blocks of "
                             f"{shape.bytes_per_block} bytes; at least 2 are needed: raise the budget or lower block_size")
        self.allocator = BlockAllocator(num_blocks)
        self.pool = KVPool(shape, num_blocks)
        self.budget_bytes = num_blocks * shape.bytes_per_block
        self.cache_only_blocks = lambda: 0  # blocks held by the prefix cache alone (set by the prefix cache)

    # ---- capacity ---------------------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self.shape.block_size

    @property
    def max_tokens(self) -> int:
        """The most positions one sequence can ever hold."""
        return self.allocator.usable * self.block_size

    @property
    def num_free(self) -> int:
        return self.allocator.num_free

    @property
    def usage_ratio(self) -> float:
        """Blocks held by running sequences (the prefix cache's own blocks are evictable, not counted)."""
        a = self.allocator
        return (a.usable - a.num_free - self.cache_only_blocks()) / a.usable

    @property
    def cached_ratio(self) -> float:
        return self.cache_only_blocks() / self.allocator.usable

    def blocks_needed(self, capacity: int, ctx_entries: int = 0) -> int:
        """Blocks one sequence reserves: `capacity` positions and a sparse-decode context of `ctx_entries`."""
        return self.shape.blocks_for(capacity) + (self.shape.ctx_blocks_for(ctx_entries) if ctx_entries else 0)

    def fits_ever(self, blocks: int) -> bool:
        return blocks <= self.allocator.usable

    def fits_now(self, blocks: int) -> bool:
        return blocks <= self.allocator.num_free

    # ---- sequences --------------------------------------------------------------------------------------------
    def allocate(self, capacity: int, ctx_entries: int = 0, prefix: list[int] = (), prefix_len: int = 0) -> SequenceKV:
        """A sequence of `capacity` positions whose first `prefix_len` positions are those of the table `prefix`
        (shared; the partly filled last block is copied). Caller checked fits_now()."""
        bs = self.block_size
        full, part = divmod(prefix_len, bs)
        shared = self.allocator.share(list(prefix[:full]))
        own = self.allocator.allocate(self.shape.blocks_for(capacity) - full)
        if part:
            self.pool.copy_block(prefix[full], own[0], part)
        ctx = self.allocator.allocate(self.shape.ctx_blocks_for(ctx_entries)) if ctx_entries else []
        return SequenceKV(blocks=shared + own, length=prefix_len, ctx_blocks=ctx)

    def fork(self, src: SequenceKV) -> SequenceKV:
        """Another sequence continuing from src's state (the n choices of a request): filled blocks shared, the
        partly filled last block of each table copied, the rest fresh."""
        out = self.allocate(len(src.blocks) * self.block_size, 0, src.blocks, src.length)
        if src.ctx_blocks:
            r = self.shape.group
            ctx = self.allocate(len(src.ctx_blocks) * self.block_size, 0, src.ctx_blocks, src.ctx_len * r)
            out.ctx_blocks, out.ctx_len = ctx.blocks, src.ctx_len
            out.ctx_hole_start, out.ctx_hole_end = src.ctx_hole_start, src.ctx_hole_end
        return out

    def free(self, kv: SequenceKV | None) -> None:
        if kv is None:
            return
        self.allocator.release(kv.blocks + kv.ctx_blocks)
        kv.blocks, kv.ctx_blocks, kv.table, kv.ctx_table = [], [], None, None


def default_budget_bytes(device: torch.device, fraction: float) -> int:
    """A fraction of free CUDA memory (call after the model is loaded), or 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return 2 << 30
