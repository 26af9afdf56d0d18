"""Paged KV cache: one pool of fixed-size blocks, each holding one layer's K/V for `block_size` positions; block
tables per sequence and layer; reference counts.

Layout: `pool.k` and `pool.v` are (num_blocks, block_size, H_kv, D) tensors. A sequence has one table per layer
(`blocks[i]`): layer i's position t lives at block `blocks[i][t // block_size]`, offset `t % block_size` (its *slot*
is block * block_size + offset). Tables of different layers are separate, so layers may hold different amounts:
a block is the unit the budget is counted in, whatever layer uses it.

A sequence that decodes sparsely also has, per Lighthouse layer, a context table (`ctx_blocks[i]`): the prompt's
selected entries (one set per query head) plus every later position. Entry e of query head h = g*r + j
(r = H / H_kv) is stored at slot e*r + j, KV head g, in the same pool (the paged decode kernel reads either kind,
`per_head` says which). A *compact* sequence keeps no full cache in its Lighthouse layers (`blocks[i] == []`):
their full-resolution K/V exist only while that layer's prefill runs, in a scratch table (`scratch`) that one
layer after another reuses and that is given back when the prefill ends.

Blocks are shared by reference (the prefix cache, the n choices of one request): a block's count is the number
of tables holding it, and it returns to the free list at zero. Shared blocks are never written: a sequence
that continues from a shared prefix copies the partly filled last block first (copy on write, `fork`).
Block 0 is a scratch block that is never handed out: padding rows of a captured decode batch write there.

The pool may store K/V in float8 (e4m3, `--kv-cache-dtype fp8_e4m3`): half the bytes per position of bf16.
Values are cast with a per-tensor scale of 1 (no calibration; what vLLM does without scales), saturating at
+-448: e4m3 keeps 3 mantissa bits, so a stored value is within 2^-4 of the original, relative, from 2^-6 up, and
within 2^-10 absolute below. Reads (`read`, the paged kernel) convert back to the model's dtype.

Admission reserves, in blocks, everything a sequence will hold (prompt + max_tokens in every layer that keeps a
full cache, its sparse-decode context, a compact prefill's scratch), so a running sequence never runs out of
cache and a request that could never fit is refused.
"""

from __future__ import annotations

import itertools
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
        return self.num_layers * self.bytes_per_layer_token

    @property
    def bytes_per_layer_token(self) -> int:
        """K and V for one position (or one slot) in one layer."""
        return 2 * self.num_kv_heads * self.head_dim * _itemsize(self.storage_dtype)

    @property
    def bytes_per_block(self) -> int:
        """One block: one layer's K/V for block_size positions."""
        return self.block_size * self.bytes_per_layer_token

    def blocks_for(self, positions: int) -> int:
        """Blocks of one layer's table of `positions` positions."""
        return math.ceil(positions / self.block_size)

    def ctx_blocks_for(self, entries: int) -> int:
        """Blocks of one layer's sparse-decode context of `entries` entries per query head."""
        return math.ceil(entries * self.group / self.block_size)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_UIDS = itertools.count(1)
FP8 = torch.float8_e4m3fn
KV_CACHE_DTYPES = {"auto": None, "fp8_e4m3": FP8}  # the engine's `kv_cache_dtype` names
FP8_MAX = 448.0


def as_bytes(x: Tensor) -> Tensor:
    """A float8 tensor as uint8 (index kernels have no float8 versions everywhere), others as they are."""
    return x.view(torch.uint8) if x.dtype == FP8 else x


def quantize_fp8(x: Tensor) -> Tensor:
    """x in any float dtype -> float8 e4m3 (scale 1), saturating at +-448 (a plain cast would give NaN)."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


@dataclass(frozen=True)
class Reservation:
    """What one sequence holds, per layer: `capacity` positions in every layer of `full_layers`, a context of
    `ctx_entries` entries per query head in every layer of `ctx_layers`, and (compact prefill) a scratch table of
    `scratch_positions` positions, given back when the prefill ends."""

    capacity: int
    full_layers: tuple[int, ...]
    ctx_layers: tuple[int, ...] = ()
    ctx_entries: int = 0
    scratch_positions: int = 0

    def blocks(self, shape: CacheShape) -> int:
        """Blocks it takes (the scratch included)."""
        return self.held_blocks(shape) + shape.blocks_for(self.scratch_positions)

    def held_blocks(self, shape: CacheShape) -> int:
        """Blocks it holds once its prefill is done."""
        ctx = len(self.ctx_layers) * shape.ctx_blocks_for(self.ctx_entries) if self.ctx_entries else 0
        return len(self.full_layers) * shape.blocks_for(self.capacity) + ctx


@dataclass
class SequenceKV:
    """One sequence's view of the pool: its per-layer block tables and how much of them is filled."""

    blocks: list[list[int]]  # per layer: the full cache ([] in a layer that keeps none: a compact Lighthouse layer)
    length: int = 0  # positions written
    ctx_blocks: list[list[int]] = field(default_factory=list)  # per layer: sparse-decode context ([] where none)
    ctx_len: int = 0  # context entries written (per query head), the same in every context layer
    ctx_hole_start: Tensor | None = None  # (L, H) int32: layer i's entries [hole_start[i, h], ctx_hole_end) are padding
    ctx_hole_end: int = 0
    scratch: list[int] = field(default_factory=list)  # compact prefill: the Lighthouse layer being prefilled
    decode_meta: tuple[Tensor, ...] | None = None  # the decode step's per-layer table and flags (model_runner)
    uid: int = field(default_factory=lambda: next(_UIDS))  # never reused (ids of freed objects are)

    @property
    def sparse(self) -> bool:
        return any(self.ctx_blocks)

    @property
    def compact(self) -> bool:
        return any(not b for b in self.blocks)

    def full_table(self, layer: int) -> list[int]:
        """The table holding layer `layer`'s positions: its own, or (compact, during the prefill) the scratch."""
        return self.blocks[layer] or self.scratch

    def all_blocks(self) -> list[int]:
        return [b for t in self.blocks for b in t] + [b for t in self.ctx_blocks for b in t] + self.scratch


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
        if n <= 0:
            return []
        out = self._free[-n:][::-1]
        del self._free[-n:]
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
    def num_layers(self) -> int:
        return self.shape.num_layers

    @property
    def max_tokens(self) -> int:
        """The most positions one sequence with a full cache in every layer can ever hold."""
        return self.max_positions(self.num_layers)

    def max_positions(self, full_layers: int) -> int:
        """The most positions one sequence can hold when `full_layers` layers keep a full cache (an upper bound for
        a compact one, whose context layers hold a fraction of that besides)."""
        return self.allocator.usable // max(1, full_layers) * self.block_size

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

    def reservation(self, capacity: int, ctx_layers: tuple[int, ...] = (), ctx_entries: int = 0, *,
                    compact: bool = False, prompt_len: int = 0) -> Reservation:
        """What a sequence of `capacity` positions holds: a full cache in every layer (in a compact one, every
        layer but the context layers, plus a scratch of `prompt_len` positions during its prefill)."""
        every = tuple(range(self.num_layers))
        if not ctx_entries:
            return Reservation(capacity, every)
        full = tuple(i for i in every if not (compact and i in ctx_layers))
        return Reservation(capacity, full, tuple(ctx_layers), ctx_entries, prompt_len if compact else 0)

    def fits_ever(self, blocks: int) -> bool:
        return blocks <= self.allocator.usable

    def fits_now(self, blocks: int) -> bool:
        return blocks <= self.allocator.num_free

    # ---- sequences --------------------------------------------------------------------------------------------
    def _continue(self, prefix: list[int], filled: int, blocks: int) -> list[int]:
        """A table of `blocks` blocks whose first `filled` slots are those of the table `prefix` (filled blocks
        shared; the partly filled last one copied)."""
        full, part = divmod(filled, self.block_size)
        shared = self.allocator.share(list(prefix[:full]))
        own = self.allocator.allocate(blocks - full)
        if part:
            self.pool.copy_block(prefix[full], own[0], part)
        return shared + own

    def allocate(self, res: Reservation, prefix: list[list[int]] | None = None, prefix_len: int = 0, *,
                 ctx_prefix: list[list[int]] | None = None, ctx_prefix_len: int = 0) -> SequenceKV:
        """A sequence holding `res`, whose first `prefix_len` positions are those of the per-layer tables `prefix`
        (shared; the partly filled last block copied), and whose first `ctx_prefix_len` context entries are those
        of the per-layer `ctx_prefix` (a compact prefix-cache entry's). Caller checked fits_now(res.blocks(shape))."""
        s = self.shape
        L = self.num_layers
        nb = s.blocks_for(res.capacity)
        blocks = [self._continue(prefix[i] if prefix else [], prefix_len, nb) if i in res.full_layers else []
                  for i in range(L)]
        ctx: list[list[int]] = [[] for _ in range(L)]
        hole = None
        if res.ctx_entries:
            nc = s.ctx_blocks_for(res.ctx_entries)
            for i in res.ctx_layers:
                ctx[i] = self._continue(ctx_prefix[i] if ctx_prefix else [], ctx_prefix_len * s.group, nc)
            hole = torch.zeros(L, s.num_heads, dtype=torch.int32, device=s.device)
        scratch = self.allocator.allocate(s.blocks_for(res.scratch_positions))
        return SequenceKV(blocks=blocks, length=prefix_len, ctx_blocks=ctx, ctx_len=ctx_prefix_len,
                          ctx_hole_start=hole, scratch=scratch)

    def release_scratch(self, kv: SequenceKV) -> None:
        """A compact sequence's prefill is done: its scratch table goes back to the free list."""
        self.allocator.release(kv.scratch)
        kv.scratch = []

    def fork(self, src: SequenceKV) -> SequenceKV:
        """Another sequence continuing from src's state (the n choices of a request): filled blocks shared, the
        partly filled last block of each table copied, the rest fresh."""
        assert not src.scratch, "fork a sequence after its prefill"
        r = self.shape.group
        blocks = [self._continue(t, src.length, len(t)) if t else [] for t in src.blocks]
        ctx = [self._continue(t, src.ctx_len * r, len(t)) if t else [] for t in src.ctx_blocks]
        return SequenceKV(blocks=blocks, length=src.length, ctx_blocks=ctx, ctx_len=src.ctx_len,
                          ctx_hole_start=src.ctx_hole_start, ctx_hole_end=src.ctx_hole_end)

    def free(self, kv: SequenceKV | None) -> None:
        if kv is None:
            return
        self.allocator.release(kv.all_blocks())
        kv.blocks, kv.ctx_blocks, kv.scratch, kv.decode_meta = [], [], [], None


def default_budget_bytes(device: torch.device, fraction: float) -> int:
    """A fraction of free CUDA memory (call after the model is loaded), or 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return 2 << 30
