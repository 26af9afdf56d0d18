"""The host-memory tier of the prefix cache: documents evicted from the device wait in (pinned) host memory.

When the prefix cache evicts an entry to make room (prefix_cache.py), its blocks' K/V, every layer's table, are
copied to host memory instead of being lost (a compact entry's context tables with them); a later prompt that starts
with the same tokens restores them to freshly allocated device blocks (a PCIe copy) instead of prefilling them again.
A restore comes in two halves: the scheduler plans it when it admits the request (`plan_restore`: which device
blocks, as which tables) and the engine runs it before the request's prefill (`copy_in`).
The entry is then an ordinary device entry, and what is reused and why it is exact is what prefix_cache.py says: the
bytes are the same.

The tier has its own budget (`host_cache_bytes`; 0: off), held as one pool of host blocks (the device pool's block
shape) allocated, pinned, when the engine starts: pinning memory is slow (on the H200 host, the request that
evicted a 64 GB document waited 45.4 s when its buffers were pinned at eviction time, 5.3 s now), copying into
pinned blocks is not (44.7 GB/s back to the device; bench/results/2026-12-02_h200_memory/). Entries take blocks from it and the tier evicts its least recently used entries whole.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lighthouse.engine.cache.allocator import BlockAllocator
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.pool import as_bytes

log = logging.getLogger(__name__)

COPY_BLOCKS = 2048  # blocks per device<->host copy at most (bf16, 8 KV heads of 128, blocks of 128: 0.5 GB of K)
SEGMENT_BYTES = 1 << 30  # the host pool's K (and V) tensors: at most this many bytes each


@dataclass(eq=False)
class HostEntry:
    tokens: Tensor  # (N,) int64
    split: int
    blocks: list[int]  # host blocks: layer 0's table, then layer 1's, ..., then a compact entry's context tables
    layout: list[int]  # blocks per layer's table
    nbytes: int
    last_used: int = 0
    # a compact entry's (prefix_cache.CacheEntry): blocks per context table, the head's selected entries, holes
    ctx_layout: list[int] | None = None
    selected: int = 0
    ctx_hole_start: Tensor | None = None
    ctx_spans: Tensor | None = None  # (L, H, S, 2) int32 on the CPU: each selected entry's window (citations)
    salt: str | None = None  # the device entry's cache_salt (prefix_cache.py)

    @property
    def compact(self) -> bool:
        return self.ctx_layout is not None

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)


@dataclass
class HostRestore:
    """A host entry's copy back to the device: into `blocks` (as many as it holds), which form `tables` (per layer)
    and, for a compact entry, `ctx_tables`; `tokens`: how many of its positions the request reuses."""

    entry: HostEntry
    blocks: list[int]
    tokens: int
    tables: list[list[int]] = field(default_factory=list)
    ctx_tables: list[list[int]] | None = None


def runs(ids: list[int], limit: int, segment: int) -> list[tuple[int, int, int]]:
    """(offset in ids, first id, length) of the maximal runs of consecutive ids, each at most `limit` long and
    within one segment of `segment` ids."""
    out: list[tuple[int, int, int]] = []
    for at, b in enumerate(ids):
        if out and out[-1][1] + out[-1][2] == b and out[-1][2] < limit and b % segment:
            o, first, n = out[-1]
            out[-1] = (o, first, n + 1)
        else:
            out.append((at, b, 1))
    return out


class HostCache:
    def __init__(self, kv: KVCacheManager, budget_bytes: int):
        self.kv = kv
        per_block = kv.shape.bytes_per_block
        num_blocks = budget_bytes // per_block + 1  # + the allocator's never-used block 0
        if num_blocks < 2:
            raise ValueError(f"a host cache of {budget_bytes} bytes holds no block of {per_block} bytes; raise it")
        pool = kv.pool
        pin = pool.k.is_cuda
        t0 = time.perf_counter()
        dtype = torch.uint8 if pool.fp8 else pool.k.dtype
        # segments of at most SEGMENT_BYTES: the pinned-memory allocator rounds a request up to a power of two (one
        # 35 GB tensor would take 64 GiB), and one failing request must not ask for the whole budget at once
        self.segment = max(1, SEGMENT_BYTES // (per_block // 2))
        self.k_segments: list[Tensor] = []
        self.v_segments: list[Tensor] = []
        for s0 in range(0, num_blocks, self.segment):
            shape = (min(self.segment, num_blocks - s0), *pool.k.shape[1:])
            self.k_segments.append(torch.empty(shape, dtype=dtype, pin_memory=pin))
            self.v_segments.append(torch.empty(shape, dtype=dtype, pin_memory=pin))
        if pin:
            log.info("host cache: %.1f GiB of pinned host memory in %.1fs", num_blocks * per_block / 2**30,
                     time.perf_counter() - t0)
        self.allocator = BlockAllocator(num_blocks)
        self.budget_bytes = self.allocator.usable * per_block
        self.entries: list[HostEntry] = []
        self.bytes_to_host = 0  # totals, for /metrics
        self.bytes_to_device = 0
        self.hit_tokens = 0
        self._clock = itertools.count()

    @property
    def used_bytes(self) -> int:
        a = self.allocator
        return (a.usable - a.num_free) * self.kv.shape.bytes_per_block

    @property
    def usage_ratio(self) -> float:
        return self.used_bytes / self.budget_bytes if self.budget_bytes else 0.0

    def offload(self, tokens: Tensor, split: int, tables: list[list[int]], keep: HostEntry | None = None, *,
                ctx_tables: list[list[int]] | None = None, selected: int = 0,
                ctx_hole_start: Tensor | None = None, ctx_spans: Tensor | None = None,
                salt: str | None = None) -> HostEntry | None:
        """Copy the K/V of the per-layer `tables` (positions [0, len(tokens))), and of a compact entry's context
        tables, to host blocks, evicting the tier's least recently used entries (never `keep`) for room; None if it
        does not fit."""
        pool = self.kv.pool
        blocks = [b for t in tables + (ctx_tables or []) for b in t]
        while self.allocator.num_free < len(blocks):
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                return None
            self._drop(min(victims, key=lambda e: e.last_used))
        host = self.allocator.allocate(len(blocks))
        idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
        pin = pool.k.is_cuda
        for at, first, n in runs(host, COPY_BLOCKS, self.segment):  # one gather and one copy per run of host blocks
            sel = idx[at : at + n]
            for dst, src in ((self.k_segments, pool.k), (self.v_segments, pool.v)):
                self._slice(dst, first, n).copy_(as_bytes(src).index_select(0, sel), non_blocking=pin)
        if pin:
            torch.cuda.current_stream(pool.k.device).synchronize()  # the device blocks are freed right after
        entry = HostEntry(tokens, split, host, [len(t) for t in tables], len(blocks) * self.kv.shape.bytes_per_block,
                          next(self._clock), None if ctx_tables is None else [len(t) for t in ctx_tables], selected,
                          None if ctx_hole_start is None else ctx_hole_start.clone(), ctx_spans, salt)
        self.entries.append(entry)
        self.bytes_to_host += entry.nbytes
        return entry

    def plan_restore(self, entry: HostEntry, blocks: list[int], tokens: int) -> HostRestore:
        """The copy of the entry's K/V into device `blocks` (as many as it holds, freshly allocated), with the
        per-layer tables (and a compact entry's context tables) they form; nothing is copied yet."""
        assert len(blocks) == entry.num_blocks
        tables, at = [], 0
        for n in entry.layout + (entry.ctx_layout or []):
            tables.append(blocks[at : at + n])
            at += n
        full = len(entry.layout)
        return HostRestore(entry, blocks, tokens, tables[:full], tables[full:] if entry.compact else None)

    def copy_in(self, restore: HostRestore) -> None:
        """Run a planned restore: the entry's K/V into its device blocks, then the entry leaves the tier
        (`tokens` reused positions are counted in `hit_tokens`)."""
        pool, entry = self.kv.pool, restore.entry
        idx = torch.tensor(restore.blocks, dtype=torch.long, device=pool.k.device)
        for at, first, n in runs(entry.blocks, COPY_BLOCKS, self.segment):
            sel = idx[at : at + n]
            for src, dst in ((self.k_segments, pool.k), (self.v_segments, pool.v)):
                piece = self._slice(src, first, n).to(dst.device, non_blocking=True)
                as_bytes(dst).index_copy_(0, sel, piece)
        self.bytes_to_device += entry.nbytes
        self.hit_tokens += restore.tokens
        self._drop(entry)

    def _slice(self, segments: list[Tensor], first: int, n: int) -> Tensor:
        """Host blocks [first, first + n), within one segment."""
        seg, at = divmod(first, self.segment)
        return segments[seg][at : at + n]

    def touch(self, entry: HostEntry) -> None:
        entry.last_used = next(self._clock)

    def _drop(self, entry: HostEntry) -> None:
        self.entries.remove(entry)
        self.allocator.release(entry.blocks)
        entry.blocks = []
