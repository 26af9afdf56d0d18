"""Decode slices: a decode step that would take longer than a budget decodes a round-robin part of the batch.

A decode step runs every running sequence together; on a slow device (a CPU: ~0.13 s a layer in attention alone
for 64 sequences of 3-8K context on the bundled checkpoint) a short prompt that arrives during the step waits for
all of it before its express prefill. With a budget the step takes the next round-robin slice of the running sequences, sized from the
measured time per decoded sequence so that it ends within the budget; a prompt arriving meanwhile is prefilled
after it. Every sequence still decodes in turn (the same work, in more steps: what is lost is a step's fixed
cost per extra step). On a GPU a step rarely reaches the budget (tens of ms), so it rarely slices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass
class DecodeSlicer:
    budget_s: float | None  # None or 0: always the whole batch
    row_s: float = 0.0  # seconds per decoded sequence, a running mean of the last steps (0: not measured yet)
    _next: int = 0  # round-robin position of the next slice
    _picked_at: float | None = field(default=None, repr=False)

    def pick(self, rows: list[T]) -> list[T]:
        """The rows this decode step runs: all of them, or (when the step would take longer than the budget) the
        next round-robin slice."""
        self._picked_at = time.perf_counter()
        if not rows or self.whole(len(rows)):
            return rows
        k = max(1, int(self.budget_s / self.row_s + 1e-9))  # (0.3 / 0.1 is 2.999...)
        start = self._next % len(rows)
        self._next = start + k
        return (rows + rows)[start : start + k]

    def whole(self, rows: int) -> bool:
        """Whether `pick` would take all of `rows` rows."""
        return not self.budget_s or self.row_s * rows <= self.budget_s

    def done(self, rows: int) -> None:
        """The step `pick` planned ended having decoded `rows` sequences: its time per sequence updates the mean."""
        if self._picked_at is None or rows == 0:
            return
        per_row = (time.perf_counter() - self._picked_at) / rows
        self._picked_at = None
        self.row_s = per_row if not self.row_s else 0.5 * (self.row_s + per_row)
