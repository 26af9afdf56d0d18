"""What one engine step runs and what came of it: the scheduler's plan for a prefill (`PrefillWork`) and how long
a piece of it may take (`piece_budget`), a step's work (`SchedulerOutput`: a prefill piece or a decode batch) and
its outcome (`StepResult`, for `Scheduler.update`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lighthouse.engine.cache.host_tier import HostRestore
from lighthouse.engine.cache.manager import BlockCopy
from lighthouse.engine.cache.prefix_cache import CacheHit
from lighthouse.engine.request import Request, Sequence


@dataclass
class PrefillWork:
    """An admitted request's prefill, as the scheduler planned it (kept until the request finishes)."""

    request: Request
    plan: Any  # the plan it runs with: the request's, or a compact hit's split and selection
    cached: int  # prompt positions [0, cached) come from the prefix cache
    restore: HostRestore | None = None  # a host-tier entry to copy in before the first piece
    hit: CacheHit | None = None  # the prefix-cache hit it continues (on the device once restored)
    copies: list[BlockCopy] = field(default_factory=list)  # partial blocks to copy before the first piece
    whole: bool = False  # an express prefill: run it to the end in this step
    pending: Any = None  # its announcement in the prefix cache while it runs (prefix_cache.begin_prefill)
    entry: Any = None  # the prefix-cache entry its completed prefill inserted (None: not kept, or already held)
    task: Any = None  # the model runner's prefill in progress (the engine starts and runs it)
    started: float = field(default_factory=time.monotonic)


@dataclass
class SchedulerOutput:
    """One step's work: a prefill piece (its copies first), or the sequences to decode (never both)."""

    prefill: PrefillWork | None = None
    decode: list[Sequence] = field(default_factory=list)


@dataclass
class StepResult:
    """What came of a step, for `update`: sequences whose token was sampled, a prefill that completed (its first
    tokens sampled), and sequences that finished (their status and finish_reason set)."""

    decoded: list[Sequence] = field(default_factory=list)
    committed: list[int] | None = None  # positions written per decoded sequence (None: one each)
    prefilled: PrefillWork | None = None
    finished: list[Sequence] = field(default_factory=list)


def piece_budget(work: PrefillWork, max_ms: float | None, express_tokens: int, others_decode: bool) -> float | None:
    """Seconds a prefill piece may take while others decode or may arrive (express on); None (whole) otherwise and
    for a short rest after a prefix hit (a question on a cached document): a budget syncs after every unit."""
    hit = work.cached
    short_rest = hit and len(work.request.prompt_ids) - hit <= express_tokens
    busy = (others_decode or express_tokens > 0) and not short_rest
    return max_ms / 1000 if max_ms is not None and busy else None
