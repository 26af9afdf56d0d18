"""The host-memory tier of the prefix cache: documents evicted from the device wait in (pinned) host memory.

When the prefix cache evicts an entry to make room (prefix_cache.py), its blocks' K/V, every layer, are copied to
host memory instead of being lost; a later prompt that starts with the same tokens restores them to freshly
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


@dataclass(eq=False)
class HostEntry:
    tokens: Tensor  # (N,) int64
    split: int
    k: Tensor  # (L, blocks, block_size, H_kv, D) on the host, the pool's storage dtype
    v: Tensor
    last_used: int = 0

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

    def offload(self, tokens: Tensor, split: int, blocks: list[int], keep: HostEntry | None = None) -> HostEntry | None:
        """Copy the K/V of `blocks` (positions [0, len(tokens))) to host memory, evicting the tier's least recently
        used entries (never `keep`) for room; None if it does not fit."""
        pool = self.kv.pool
        idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
        need = 2 * pool.k[:, :1].numel() * pool.k.element_size() * len(blocks)
        while self.used_bytes + need > self.budget_bytes:
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                return None
            self._drop(min(victims, key=lambda e: e.last_used))
        pin = pool.k.is_cuda
        k, v = (as_bytes(t).index_select(1, idx) for t in (pool.k, pool.v))  # (L, nb, BS, H_kv, D), on the device
        hk = torch.empty(k.shape, dtype=k.dtype, pin_memory=pin)
        hv = torch.empty(v.shape, dtype=v.dtype, pin_memory=pin)
        hk.copy_(k, non_blocking=pin)
        hv.copy_(v, non_blocking=pin)
        if pin:
            torch.cuda.current_stream(pool.k.device).synchronize()  # the device blocks are freed right after
        entry = HostEntry(tokens, split, hk.view(pool.k.dtype), hv.view(pool.v.dtype), next(self._clock))
        self.entries.append(entry)
        self.used_bytes += entry.nbytes
        self.bytes_to_host += entry.nbytes
        return entry

    def restore(self, entry: HostEntry, blocks: list[int], tokens: int) -> None:
        """Copy the entry's K/V into `blocks` (as many as it holds, freshly allocated) and drop it from the tier;
        `tokens`: how many of its positions the request reuses (counted in `hit_tokens`)."""
        pool = self.kv.pool
        assert len(blocks) == entry.k.shape[1]
        idx = torch.tensor(blocks, dtype=torch.long, device=pool.k.device)
        for host, dev in ((entry.k, pool.k), (entry.v, pool.v)):
            as_bytes(dev).index_copy_(1, idx, as_bytes(host).to(dev.device, non_blocking=True))
        self.bytes_to_device += entry.nbytes
        self.hit_tokens += tokens
        self._drop(entry)

    def touch(self, entry: HostEntry) -> None:
        entry.last_used = next(self._clock)

    def _drop(self, entry: HostEntry) -> None:
        self.entries.remove(entry)
        self.used_bytes -= entry.nbytes
