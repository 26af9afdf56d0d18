"""The selection's 128-lane descending bitonic sort, lane for lane.

Why emulate a sorting network instead of calling torch.sort: scores tie often (bf16 norms, max-pooled
windows), and which of several tied entries lands in a top-64 list decides which windows get refined. The
official selection kernel resolves ties through a bitonic network whose compare-exchange swaps only on a strict
inequality; reproducing that network exactly is what makes our selected index sets identical to its.

Network: for k = 2, 4, ..., 128 and j = k/2, ..., 1, lane t pairs with t ^ j; the pair sorts descending when
(t & k) == 0, else ascending. Rows are independent (vectorized over any number of rows).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

LANES = 128


@functools.lru_cache(maxsize=None)
def _stages_cpu(n: int) -> tuple[tuple[Tensor, Tensor], ...]:
    lane = torch.arange(n)
    stages = []
    k = 2
    while k <= n:
        j = k // 2
        while j >= 1:
            partner = lane ^ j
            is_low = (lane & j) == 0
            descending = (lane & k) == 0
            # a lane "keeps the larger" when it is the low lane of a descending pair or the high lane of an ascending one
            keeps_larger = is_low == descending
            stages.append((partner, keeps_larger))
            j //= 2
        k *= 2
    return tuple(stages)


_DEVICE_STAGES: dict = {}


def _stages(n: int, device: torch.device):
    key = (n, str(device))
    if key not in _DEVICE_STAGES:
        _DEVICE_STAGES[key] = tuple((p.to(device), m.to(device)) for p, m in _stages_cpu(n))
    return _DEVICE_STAGES[key]


def bitonic_sort_desc(scores: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row of `scores` (R, 128) descending, carrying `ids` (R, 128) along.

    Ties resolve exactly as the official CUDA network resolves them (swap only on strict inequality).
    """
    n = scores.shape[-1]
    for partner, keeps_larger in _stages(n, scores.device):
        other_s = scores[:, partner]
        other_i = ids[:, partner]
        swap = torch.where(keeps_larger, scores < other_s, scores > other_s)
        scores = torch.where(swap, other_s, scores)
        ids = torch.where(swap, other_i, ids)
    return scores, ids
