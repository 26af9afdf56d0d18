"""Sizes and offsets of one Lighthouse call, computed once on the host and shared by every kernel launcher.

All lengths are per (batch, head) row. `n_run` is the length the selection runs at (the caller's N rounded up
by `validation.padded_len`); kernels never materialize the padding: loads past `n_valid` read zeros (as the
reference's zero padding) and stores past it are dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lighthouse.ops.validation import BATCH, TILE_BUDGET, padded_len


# Under Triton's CPU interpreter every tl op costs the same whatever its size: use big blocks there.
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def block(gpu: int) -> int:
    return 128 if INTERPRETING else gpu


@dataclass(frozen=True)
class Plan:
    n_valid: int  # caller's N
    n_run: int  # padded length the pyramid is built on
    levels: int  # L >= 2
    p: int  # pooling factor
    topk: int

    @staticmethod
    def make(n: int, levels: int, p: int, topk: int) -> "Plan":
        return Plan(n, padded_len(n, levels, p, topk), levels, p, topk)

    @property
    def top(self) -> int:  # index of the coarsest level
        return self.levels - 1

    @property
    def c_top(self) -> int:  # window of the coarsest level
        return self.p**self.top

    @property
    def coarse_len(self) -> int:
        return self.n_run // self.c_top

    @property
    def tiles(self) -> int:
        return self.topk // TILE_BUDGET

    @property
    def span(self) -> int:  # coarse entries per tile
        return self.coarse_len // self.tiles

    @property
    def seg(self) -> int:  # entries each tile emits: its span, then 128*p children per finer level
        return self.span + self.top * TILE_BUDGET * self.p

    @property
    def S(self) -> int:  # selected length = N/p^(L-1) + (L-1)*p*topk
        return self.tiles * self.seg

    def level_len(self, level: int) -> int:
        return self.n_run // self.p**level

    @property
    def pyr_offsets(self) -> tuple[int, ...]:  # start of each level in [level 0 | level 1 | ...]
        offs, acc = [], 0
        for level in range(self.levels):
            offs.append(acc)
            acc += self.level_len(level)
        return tuple(offs)

    @property
    def pyr_len(self) -> int:
        return sum(self.level_len(level) for level in range(self.levels))

    @property
    def score_offsets(self) -> tuple[int, ...]:  # start of level l (l >= 1) in the score buffer [level 1 | level 2 | ...]
        offs, acc = [], 0
        for level in range(1, self.levels):
            offs.append(acc)
            acc += self.level_len(level)
        return tuple(offs)

    @property
    def score_len(self) -> int:
        return sum(self.level_len(level) for level in range(1, self.levels))

    @property
    def key_shift(self) -> int:  # sort keys are scaled by 2^(L-1) so that "end - 2^-l" is an integer
        return self.top

    def check(self) -> None:
        assert self.span >= TILE_BUDGET and self.span % BATCH == 0, self
        assert self.n_run * 2**self.key_shift < 2**31, "sort key would overflow 31 bits"
        assert self.pyr_len < 2**31, "pyramid index would overflow int32"
