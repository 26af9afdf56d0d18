"""KV cache memory: a byte budget, per-sequence reservations made at admission, and the cache tensors.

Every sequence reserves, when it is admitted, the bytes for its whole life (prompt + max_tokens positions in
every layer, plus the sparse-decode context when it asks for one). So a running request never runs out of
cache, and a request that could never fit is refused up front (`max_model_len` is derived from the budget).
Requests that fit the budget but not the free space wait in the queue. The prefix cache (prefix_cache.py)
holds finished prompts' K/V in the same budget (`cached_bytes`); it gives that space back on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CacheShape:
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def bytes_per_token(self) -> int:
        """K and V for one position in every layer."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _itemsize(self.dtype)

    def sparse_context_bytes(self, entries: int, lighthouse_layers: int) -> int:
        """Selected pooled K/V per query head (each head selects its own entries) in the Lighthouse layers."""
        return 2 * lighthouse_layers * self.num_heads * entries * self.head_dim * _itemsize(self.dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class SequenceKV:
    """One sequence's cache: k[i], v[i] are layer i's (1, H_kv, capacity, D) buffers; `length` filled."""

    k: list[Tensor]
    v: list[Tensor]
    capacity: int
    reserved_bytes: int
    length: int = 0
    # Sparse decode: per Lighthouse layer, the prompt's selected (pooled) K/V (1, H, S, D) and the number of
    # prompt positions they summarize; positions from `sparse_from` on are attended at full resolution.
    sparse_k: dict[int, Tensor] = field(default_factory=dict)
    sparse_v: dict[int, Tensor] = field(default_factory=dict)
    sparse_from: int = 0
    sparse_len: int = 0  # filled entries of each sparse buffer
    sparse_mask: dict[int, Tensor] = field(default_factory=dict)  # (1, H, 1, cap) bool, only where padding exists

    def copy_from(self, other: "SequenceKV", length: int) -> None:
        """Copy the first `length` positions (and the sparse context) of another sequence's cache."""
        for i in range(len(self.k)):
            self.k[i][:, :, :length].copy_(other.k[i][:, :, :length])
            self.v[i][:, :, :length].copy_(other.v[i][:, :, :length])
        self.sparse_k = {i: t.clone() for i, t in other.sparse_k.items()}
        self.sparse_v = {i: t.clone() for i, t in other.sparse_v.items()}
        self.sparse_mask = {i: t.clone() for i, t in other.sparse_mask.items()}
        self.sparse_from = other.sparse_from
        self.sparse_len = other.sparse_len
        self.length = length


class KVCacheManager:
    """Accounts the budget and hands out per-sequence buffers (contiguous per layer, allocated on admission)."""

    def __init__(self, shape: CacheShape, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"KV cache budget must be positive, got {budget_bytes} bytes")
        self.shape = shape
        self.budget_bytes = int(budget_bytes)
        self.used_bytes = 0  # reserved by running sequences
        self.cached_bytes = 0  # held by the prefix cache (evictable)

    @property
    def max_tokens(self) -> int:
        """The most positions one sequence can ever hold."""
        return self.budget_bytes // self.shape.bytes_per_token

    @property
    def usage_ratio(self) -> float:
        """Reserved by requests (the prefix cache is evictable, so it is not counted here)."""
        return self.used_bytes / self.budget_bytes

    @property
    def cached_ratio(self) -> float:
        return self.cached_bytes / self.budget_bytes

    def bytes_for(self, capacity: int, sparse_entries: int = 0, lighthouse_layers: int = 0) -> int:
        return capacity * self.shape.bytes_per_token + self.shape.sparse_context_bytes(sparse_entries, lighthouse_layers)

    def fits_ever(self, nbytes: int) -> bool:
        return nbytes <= self.budget_bytes

    def fits_now(self, nbytes: int) -> bool:
        return self.used_bytes + self.cached_bytes + nbytes <= self.budget_bytes

    def allocate(self, capacity: int, nbytes: int) -> SequenceKV:
        """Reserve `nbytes` and allocate buffers for `capacity` positions. Caller checked fits_now()."""
        s = self.shape
        shape = (1, s.num_kv_heads, capacity, s.head_dim)
        k = [torch.empty(shape, dtype=s.dtype, device=s.device) for _ in range(s.num_layers)]
        v = [torch.empty(shape, dtype=s.dtype, device=s.device) for _ in range(s.num_layers)]
        self.used_bytes += nbytes
        return SequenceKV(k=k, v=v, capacity=capacity, reserved_bytes=nbytes)

    def free(self, kv: SequenceKV | None) -> None:
        if kv is None or kv.reserved_bytes == 0:
            return
        self.used_bytes -= kv.reserved_bytes
        kv.reserved_bytes = 0
        kv.k.clear(), kv.v.clear(), kv.sparse_k.clear(), kv.sparse_v.clear(), kv.sparse_mask.clear()


def default_budget_bytes(device: torch.device, fraction: float) -> int:
    """A fraction of free CUDA memory (call after the model is loaded), or 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    return 2 << 30
