"""One sequence's tables in the pool: per layer its full table and its context table (as its spec says), the
compact prefill's scratch, and how much of them is written.

Lengths move in two places only: the prefill sets them when it has written the prompt, and the scheduler commits
one more position per decode step once the step's token was sampled (`commit_token`; a speculative verify step:
the positions whose tokens were accepted): a decode step that fails
before that is run again over the same slots.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from torch import Tensor

from lighthouse.engine.cache.spec import KVSpec, LayerSpec

_UIDS = itertools.count(1)


@dataclass
class SequenceKV:
    blocks: list[list[int]]  # per layer: the full cache ([] in a layer that keeps none: a compact Lighthouse layer)
    length: int = 0  # positions written
    ctx_blocks: list[list[int]] = field(default_factory=list)  # per layer: sparse-decode context ([] where none)
    ctx_len: int = 0  # context entries written (per query head), the same in every context layer
    ctx_hole_start: Tensor | None = None  # (L, H) int32: layer i's entries [hole_start[i, h], ctx_hole_end) are padding
    ctx_hole_end: int = 0
    # compact: (L, H, S, 2) int32 on the CPU: layer i's selected entry e of head h pools the positions
    # [start, start + length) (ctx_spans[i, h, e]), in the stored order; zeros in layers without a context
    ctx_spans: Tensor | None = None
    scratch: list[int] = field(default_factory=list)  # compact prefill: the Lighthouse layer being prefilled
    decode_meta: tuple[Tensor, ...] | None = None  # the decode step's per-layer table and flags (model_runner)
    spec: KVSpec | None = None  # what the tables were allocated for
    uid: int = field(default_factory=lambda: next(_UIDS))  # never reused (ids of freed objects are)

    @property
    def sparse(self) -> bool:
        return any(self.ctx_blocks)

    @property
    def compact(self) -> bool:
        return any(not b for b in self.blocks)

    def layer(self, i: int) -> LayerSpec:
        """What layer i keeps (from the tables themselves, so that it holds for a fork or a test's own tables)."""
        return LayerSpec(bool(self.blocks[i]), bool(self.ctx_blocks) and bool(self.ctx_blocks[i]))

    def full_table(self, layer: int) -> list[int]:
        """The table holding layer `layer`'s positions: its own, or (compact, during the prefill) the scratch."""
        return self.blocks[layer] or self.scratch

    def decode_table(self, layer: int) -> tuple[list[int], bool]:
        """The table the decode step reads and appends to in `layer`, and whether it is per query head (a context)."""
        if self.layer(layer).decode_reads_context:
            return self.ctx_blocks[layer], True
        return self.blocks[layer], False

    def decode_position(self) -> tuple[int, int]:
        """Where the next token's K/V go: (position in a full table, entry in a context table)."""
        return self.length, self.ctx_len

    def commit_token(self, n: int = 1) -> None:
        """n more positions written (a decode step whose token was sampled; a verify step: its last token and the
        drafts accepted, so the K/V of rejected drafts past the length are overwritten by later steps)."""
        self.length += n
        if self.sparse:
            self.ctx_len += n

    def all_blocks(self) -> list[int]:
        return [b for t in self.blocks for b in t] + [b for t in self.ctx_blocks for b in t] + self.scratch
