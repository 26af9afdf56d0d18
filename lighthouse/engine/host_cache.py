"""The host-memory tier of the prefix cache: documents evicted from the device wait in (pinned) host memory.

When the prefix cache evicts an entry to make room (prefix_cache.py), its blocks' K/V, every layer's table, are
copied to host memory instead of being lost; a later prompt that starts with the same tokens restores them to freshly
allocated device blocks (a PCIe copy) instead of prefilling them again. The entry is then an ordinary device
entry, and what is reused and why it is exact is what prefix_cache.py says: the bytes are the same.

The tier has its own budget (`host_cache_bytes`; 0: off) and evicts its least recently used entries whole.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import KVCacheManager, as_bytes


COPY_BLOCKS = 2048  # blocks per device<->host copy (bf16, 8 KV heads of 128, blocks of 128: 0.5 GB each of K, V)


@dataclass(eq=False)
class HostEntry:
    tokens: Tensor  # (N,) int64
    split: int
    k: Tensor  # (blocks, block_size, H_kv, D) on the host, the pool's storage dtype: layer 0's table, then 1's, ...
    v: Tensor
    layout: list[int]  # blocks per layer's table
    last_used: int = 0

    @property
    def num_blocks(self) -> int:
        return int(self.k.shape[0])

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass
class HostCache:
    kv: KVCacheManager
    budget_bytes: int
    entries: list[HostEntry] = field(default_factory=list)
    used_bytes: int = 0
    bytes_to_host: int = 0  # totals, for /metrics
    bytes_to_device: int = 0
    hit_tokens: int = 0
    _clock: itertools.count = field(default_factory=itertools.count)

    @property
    def usage_ratio(self) -> float:
        return self.used_bytes / self.budget_bytes if self.budget_bytes else 0.0

    def offload(self, tokens: Tensor, split: int, tables: list[list[int]],
                keep: HostEntry | None = None) -> HostEntry | None:
        """Copy the K/V of the per-layer `tables` (positions [0, len(tokens))) to host memory, evicting the tier's
        least recently used entries (never `keep`) for room; None if it does not fit."""
        pool = self.kv.pool
        blocks = [b for t in tables for b in t]
        idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
        need = 2 * pool.k[:1].numel() * pool.k.element_size() * len(blocks)
        while self.used_bytes + need > self.budget_bytes:
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                return None
            self._drop(min(victims, key=lambda e: e.last_used))
        pin = pool.k.is_cuda
        hk, hv = (torch.empty((len(blocks), *t.shape[1:]), dtype=torch.uint8 if pool.fp8 else t.dtype, pin_memory=pin)
                  for t in (pool.k, pool.v))
        for c0 in range(0, len(blocks), COPY_BLOCKS):  # in pieces: a whole 512K document would be 64 GB more
            sel = idx[c0 : c0 + COPY_BLOCKS]
            for host, dev in ((hk, pool.k), (hv, pool.v)):
                host[c0 : c0 + len(sel)].copy_(as_bytes(dev).index_select(0, sel), non_blocking=pin)
        if pin:
            torch.cuda.current_stream(pool.k.device).synchronize()  # the device blocks are freed right after
        entry = HostEntry(tokens, split, hk.view(pool.k.dtype), hv.view(pool.v.dtype), [len(t) for t in tables],
                          next(self._clock))
        self.entries.append(entry)
        self.used_bytes += entry.nbytes
        self.bytes_to_host += entry.nbytes
        return entry

    def restore(self, entry: HostEntry, blocks: list[int], tokens: int) -> list[list[int]]:
        """Copy the entry's K/V into `blocks` (as many as it holds, freshly allocated) and drop it from the tier;
        `tokens`: how many of its positions the request reuses (counted in `hit_tokens`). The per-layer tables."""
        pool = self.kv.pool
        assert len(blocks) == entry.num_blocks
        idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
        for c0 in range(0, len(blocks), COPY_BLOCKS):  # in pieces, as offload
            sel = idx[c0 : c0 + COPY_BLOCKS]
            for host, dev in ((entry.k, pool.k), (entry.v, pool.v)):
                piece = as_bytes(host)[c0 : c0 + len(sel)].to(dev.device, non_blocking=True)
                as_bytes(dev).index_copy_(0, sel, piece)
        self.bytes_to_device += entry.nbytes
        self.hit_tokens += tokens
        self._drop(entry)
        tables, at = [], 0
        for n in entry.layout:
            tables.append(blocks[at : at + n])
            at += n
        return tables

    def touch(self, entry: HostEntry) -> None:
        entry.last_used = next(self._clock)

    def _drop(self, entry: HostEntry) -> None:
        self.entries.remove(entry)
        self.used_bytes -= entry.nbytes
