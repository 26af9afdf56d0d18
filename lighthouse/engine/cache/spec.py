"""What a sequence keeps in the KV cache, per layer: the spec that admission counts blocks from, that the prefill
writes by and that the decode step reads by.

A layer of a sequence keeps one or two *tables* of the pool (pool.py), and a compact prefill borrows a third:
- full: every position at full resolution (`capacity` positions: the prompt and every token generated after it);
- context: the sparse-decode context of a Lighthouse layer: the prompt's selected entries, one set per query head,
  then every position after the split (`ctx_entries` entries per query head; an entry costs r = H / H_kv slots);
- scratch: a compact layer has no full table, so while its prefill runs, its full-resolution K/V go to one scratch
  table that layer after layer reuses (`scratch_positions` positions), given back when the prefill ends.

Kinds of sessions in these terms: full (every layer full; with sparse decode the Lighthouse layers add a context),
compact (the Lighthouse layers keep the context alone, the scratch during the prefill), in bf16 or fp8 (CacheShape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
        return 2 * self.num_kv_heads * self.head_dim * torch.empty((), dtype=self.storage_dtype).element_size()

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


@dataclass(frozen=True)
class LayerSpec:
    """What one layer of a sequence keeps."""

    full: bool  # a full table of the sequence's capacity
    context: bool  # a sparse-decode context table (per query head)

    @property
    def scratch(self) -> bool:
        """Its prefill writes full-resolution K/V to the shared scratch table (a compact Lighthouse layer)."""
        return self.context and not self.full

    @property
    def decode_reads_context(self) -> bool:
        """The decode step reads (and appends to) the context table, per query head, instead of the full table."""
        return self.context


@dataclass(frozen=True)
class KVSpec:
    """What one sequence holds: `capacity` positions in every layer of `full_layers`, a context of `ctx_entries`
    entries per query head in every layer of `ctx_layers`, and (compact prefill) a scratch table of
    `scratch_positions` positions, given back when the prefill ends. Admission reserves all of it up front."""

    capacity: int
    full_layers: tuple[int, ...]
    ctx_layers: tuple[int, ...] = ()
    ctx_entries: int = 0
    scratch_positions: int = 0

    def layer(self, i: int) -> LayerSpec:
        return LayerSpec(i in self.full_layers, bool(self.ctx_entries) and i in self.ctx_layers)

    @property
    def compact(self) -> bool:
        return any(i not in self.full_layers for i in self.ctx_layers)

    def blocks(self, shape: CacheShape) -> int:
        """Blocks it takes (the scratch included)."""
        return self.held_blocks(shape) + shape.blocks_for(self.scratch_positions)

    def held_blocks(self, shape: CacheShape) -> int:
        """Blocks it holds once its prefill is done."""
        ctx = len(self.ctx_layers) * shape.ctx_blocks_for(self.ctx_entries) if self.ctx_entries else 0
        return len(self.full_layers) * shape.blocks_for(self.capacity) + ctx

    def filled_blocks(self, shape: CacheShape, prompt_len: int, ctx_filled: int) -> int:
        """Whole blocks filled once `prompt_len` positions and `ctx_filled` context entries are written: what another
        sequence continuing from this one (the request's other choices, a prefix-cache hit) shares."""
        ctx = len(self.ctx_layers) * (ctx_filled * shape.group // shape.block_size) if self.ctx_entries else 0
        return len(self.full_layers) * (prompt_len // shape.block_size) + ctx


Reservation = KVSpec  # the name admission and memory.py used for it


def kv_spec(num_layers: int, capacity: int, ctx_layers: tuple[int, ...] = (), ctx_entries: int = 0, *,
            compact: bool = False, prompt_len: int = 0) -> KVSpec:
    """What a sequence of `capacity` positions holds: a full cache in every layer (in a compact one, every layer but
    the context layers, plus a scratch of `prompt_len` positions during its prefill), and the context layers'."""
    every = tuple(range(num_layers))
    if not ctx_entries:
        return KVSpec(capacity, every)
    full = tuple(i for i in every if not (compact and i in ctx_layers))
    return KVSpec(capacity, full, tuple(ctx_layers), ctx_entries, prompt_len if compact else 0)


def continued_spec(spec: KVSpec, selected: int, split: int) -> KVSpec:
    """A compact spec continuing a prefix-cache entry whose head [0, split) selected `selected` entries: its context
    grows from the entry's (the entry's split and selection stand for the prompt's), and it needs no scratch."""
    return KVSpec(spec.capacity, spec.full_layers, spec.ctx_layers, selected + spec.capacity - split)
