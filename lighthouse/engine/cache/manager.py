"""The KV cache manager: the budget in blocks, each sequence's tables (allocated whole from its spec, shared by
reference, copied on write), and the count of blocks only the prefix cache holds.

Blocks are shared by reference (the prefix cache, the n choices of one request): shared blocks are never written,
so a sequence that continues from a shared prefix copies the partly filled last block first (copy on write). That
copy is returned to the caller when it asks (`copies`), so that the scheduler can allocate now and the engine copy
when it runs the step (after restoring a host-tier entry the copy reads from).

Admission reserves, in blocks, everything a sequence will hold (spec.py: its full tables, its context, a compact
prefill's scratch), so a running sequence never runs out of cache and a request that could never fit is refused.
"""

from __future__ import annotations

import torch

from lighthouse.engine.cache.allocator import BlockAllocator
from lighthouse.engine.cache.pool import KVPool
from lighthouse.engine.cache.sequence_kv import SequenceKV
from lighthouse.engine.cache.spec import CacheShape, KVSpec, kv_spec

BlockCopy = tuple[int, int, int]  # (source block, destination block, slots): the first slots of src into dst


class KVCacheManager:
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
        self._cached: dict[int, int] = {}  # block -> references the prefix cache holds on it

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

    def fits_ever(self, blocks: int) -> bool:
        return blocks <= self.allocator.usable

    def fits_now(self, blocks: int) -> bool:
        return blocks <= self.allocator.num_free

    def reservation(self, capacity: int, ctx_layers: tuple[int, ...] = (), ctx_entries: int = 0, *,
                    compact: bool = False, prompt_len: int = 0) -> KVSpec:
        """The spec of a sequence of `capacity` positions in this cache's layers (spec.kv_spec)."""
        return kv_spec(self.num_layers, capacity, ctx_layers, ctx_entries, compact=compact, prompt_len=prompt_len)

    @property
    def usage_ratio(self) -> float:
        """Blocks held by running sequences (the prefix cache's own blocks are evictable, not counted)."""
        a = self.allocator
        return (a.usable - a.num_free - self.cache_only_blocks()) / a.usable

    @property
    def cached_ratio(self) -> float:
        return self.cache_only_blocks() / self.allocator.usable

    # ---- the prefix cache's references ------------------------------------------------------------------------
    def cache_only_blocks(self) -> int:
        """Blocks that only the prefix cache holds (what evicting every entry would free)."""
        refs = self.allocator.refs
        return sum(1 for b, n in self._cached.items() if refs[b] == n)

    def share_for_cache(self, blocks: list[int]) -> list[int]:
        """One more reference on each block, held by the prefix cache."""
        for b in blocks:
            self._cached[b] = self._cached.get(b, 0) + 1
        return self.allocator.share(blocks)

    def allocate_for_cache(self, n: int) -> list[int]:
        """n fresh blocks held by the prefix cache (an entry restored from the host tier)."""
        out = self.allocator.allocate(n)
        for b in out:
            self._cached[b] = self._cached.get(b, 0) + 1
        return out

    def release_from_cache(self, blocks: list[int]) -> None:
        for b in blocks:
            self._cached[b] -= 1
            if not self._cached[b]:
                del self._cached[b]
        self.allocator.release(blocks)

    # ---- sequences --------------------------------------------------------------------------------------------
    def _continue(self, prefix: list[int], filled: int, blocks: int, copies: list[BlockCopy] | None) -> list[int]:
        """A table of `blocks` blocks whose first `filled` slots are those of the table `prefix` (filled blocks
        shared; the partly filled last one copied, now or by whoever takes `copies`)."""
        full, part = divmod(filled, self.block_size)
        shared = self.allocator.share(list(prefix[:full]))
        own = self.allocator.allocate(blocks - full)
        if part:
            if copies is None:
                self.pool.copy_block(prefix[full], own[0], part)
            else:
                copies.append((prefix[full], own[0], part))
        return shared + own

    def allocate(self, spec: KVSpec, prefix: list[list[int]] | None = None, prefix_len: int = 0, *,
                 ctx_prefix: list[list[int]] | None = None, ctx_prefix_len: int = 0,
                 copies: list[BlockCopy] | None = None) -> SequenceKV:
        """A sequence holding `spec`, whose first `prefix_len` positions are those of the per-layer tables `prefix`
        (shared; the partly filled last block copied), and whose first `ctx_prefix_len` context entries are those
        of the per-layer `ctx_prefix` (a compact prefix-cache entry's). Caller checked fits_now(spec.blocks(shape)).
        With `copies`, the partial blocks' copies are appended there instead of run now (`run_copies`)."""
        s = self.shape
        L = self.num_layers
        nb = s.blocks_for(spec.capacity)
        blocks = [self._continue(prefix[i] if prefix else [], prefix_len, nb, copies) if i in spec.full_layers
                  else [] for i in range(L)]
        ctx: list[list[int]] = [[] for _ in range(L)]
        hole = None
        if spec.ctx_entries:
            nc = s.ctx_blocks_for(spec.ctx_entries)
            for i in spec.ctx_layers:
                ctx[i] = self._continue(ctx_prefix[i] if ctx_prefix else [], ctx_prefix_len * s.group, nc, copies)
            hole = torch.zeros(L, s.num_heads, dtype=torch.int32, device=s.device)
        scratch = self.allocator.allocate(s.blocks_for(spec.scratch_positions))
        return SequenceKV(blocks=blocks, length=prefix_len, ctx_blocks=ctx, ctx_len=ctx_prefix_len,
                          ctx_hole_start=hole, scratch=scratch, spec=spec)

    def run_copies(self, copies: list[BlockCopy]) -> None:
        for src, dst, n in copies:
            self.pool.copy_block(src, dst, n)

    def release_scratch(self, kv: SequenceKV) -> None:
        """A compact sequence's prefill is done: its scratch table goes back to the free list."""
        self.allocator.release(kv.scratch)
        kv.scratch = []

    def fork(self, src: SequenceKV) -> SequenceKV:
        """Another sequence continuing from src's state (the n choices of a request): filled blocks shared, the
        partly filled last block of each table copied, the rest fresh."""
        assert not src.scratch, "fork a sequence after its prefill"
        r = self.shape.group
        blocks = [self._continue(t, src.length, len(t), None) if t else [] for t in src.blocks]
        ctx = [self._continue(t, src.ctx_len * r, len(t), None) if t else [] for t in src.ctx_blocks]
        return SequenceKV(blocks=blocks, length=src.length, ctx_blocks=ctx, ctx_len=src.ctx_len,
                          ctx_hole_start=src.ctx_hole_start, ctx_hole_end=src.ctx_hole_end, ctx_spans=src.ctx_spans,
                          spec=src.spec)

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
