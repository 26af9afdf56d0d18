"""The scheduler: admission and each request's lifecycle. `schedule()` says what to run this step, `update()` takes
what came of it.

A step either runs a piece of a prefill or decodes every running sequence together. A prefill starts for the
request at the head of the queue when its whole reservation fits now (after evicting prefix-cache entries, the one
it would reuse last) and runs in pieces (the engine bounds a piece's time) until it is done; one long prefill is in
progress at a time. After a prefill piece the next step decodes, so neither a long prompt nor a stream of arrivals
stalls the requests already generating for more than one piece. The head of the queue is never skipped.

Express prefills: while a long prefill is in progress, the head of the queue, when its prompt has at most
`express_tokens` tokens and it fits, is prefilled whole between two pieces (a short question does not wait for a
512K document's prefill). Only the head goes, and a long head waits for the prefill in progress.

Admitting a request allocates its first sequence's tables now (sharing a prefix-cache hit's blocks); what must be
copied before its prefill runs (a host-tier entry coming back, the partly filled last block of a hit) is part of
the schedule, for the engine to run. `update` commits what a step's sampling produced (one more position per
decoded sequence: lengths never move before sampling succeeded), completes prefills (the scratch given back, the
other choices forked), and retires finished sequences: their blocks are freed and the prompt stays in the prefix
cache by reference.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from lighthouse.engine.admission import Admission, cache_split, spec_with_hit
from lighthouse.engine.cache.host_tier import HostRestore
from lighthouse.engine.cache.manager import BlockCopy, KVCacheManager
from lighthouse.engine.cache.prefix_cache import CacheHit, PrefixCache
from lighthouse.engine.request import Request, Sequence, Status


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
    prefilled: PrefillWork | None = None
    finished: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, kv: KVCacheManager, prefix_cache: PrefixCache | None, *, max_num_seqs: int,
                 express_tokens: int = 0, compact_reuse: bool = True):
        self.kv, self.prefix_cache = kv, prefix_cache
        # whether a compact entry's context can be continued (not where its K were rotated with the op's own
        # frequencies: lighthouse.rope "after_select" with rope_freqs "unscaled")
        self.compact_reuse = compact_reuse
        self.admission = Admission(kv.shape)
        self.max_num_seqs = max_num_seqs
        self.express_tokens = express_tokens  # 0: no express prefills
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []
        self.prefilling: PrefillWork | None = None  # the long prefill in progress
        self.admitted: dict[str, PrefillWork] = {}  # request id -> its prefill, until the request finishes
        self._last_was_prefill = False

    # ---- queue ------------------------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove_waiting(self, request: Request) -> bool:
        try:
            self.waiting.remove(request)
            return True
        except ValueError:
            return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def has_decodable(self) -> bool:
        return any(s.status is Status.RUNNING for s in self.running)

    # ---- schedule ---------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        if self.prefilling is not None:  # a prefill in progress: its next piece, after a decode step if one waits
            if self._last_was_prefill and self.has_decodable():
                self._last_was_prefill = False
                return SchedulerOutput(decode=self._batch())
            self._last_was_prefill = True
            express = self._next_express()
            return SchedulerOutput(prefill=express or self.prefilling)
        work = self._next_prefill()
        if work is not None:
            self.prefilling = work
            return SchedulerOutput(prefill=work)
        return SchedulerOutput(decode=self._batch())

    def _batch(self) -> list[Sequence]:
        return [s for s in self.running if s.status is Status.RUNNING][: self.max_num_seqs]

    def _next_prefill(self) -> PrefillWork | None:
        """The head of the queue, admitted, if it can start now (and decode did not just get skipped), else None."""
        if not self.waiting or (self._last_was_prefill and self.running):
            self._last_was_prefill = False
            return None
        req = self.waiting[0]
        work = self._admit(req) if len(self.running) + len(req.seqs) <= self.max_num_seqs else None
        self._last_was_prefill = work is not None
        return work

    def _next_express(self) -> PrefillWork | None:
        """The head of the queue, if it is short enough to prefill whole beside the prefill in progress and fits."""
        if not self.express_tokens or not self.waiting:
            return None
        req = self.waiting[0]
        if len(req.prompt_ids) > self.express_tokens or len(self.running) + len(req.seqs) > self.max_num_seqs:
            return None
        work = self._admit(req)
        if work is not None:
            work.whole = True
        return work

    # ---- admission --------------------------------------------------------------------------------------------
    def _admit(self, req: Request) -> PrefillWork | None:
        """Make room for the request and allocate its first sequence's tables; None if it must wait."""
        room = self._make_room(req)
        if room is None:
            return None
        hit, restore = room
        self.waiting.popleft()
        work = PrefillWork(req, req.plan, hit.tokens if hit is not None else 0, restore, hit=hit)
        e = hit.entry if hit is not None else None
        first = req.seqs[0]
        if e is None or not e.compact:
            first.kv = self.kv.allocate(req.reservation, e.blocks if e is not None else None, work.cached,
                                        copies=work.copies)
        else:  # continuing a compact entry: with its split and selection, its context grown
            work.plan = replace(req.plan, split=e.split, selected=e.selected)
            first.kv = self.kv.allocate(spec_with_hit(req.reservation, hit), e.blocks, work.cached, ctx_prefix=e.ctx_blocks,
                                        ctx_prefix_len=e.selected + work.cached - e.split, copies=work.copies)
            assert e.ctx_hole_start is not None
            first.kv.ctx_hole_start, first.kv.ctx_hole_end = e.ctx_hole_start.clone(), e.selected
        self.admitted[req.request_id] = work
        return work

    def cache_hit(self, req: Request) -> CacheHit | None:
        """The prefix-cache entry (on the device or in the host tier) the request can reuse, if any."""
        if self.prefix_cache is None or not req.cache_prompt:
            return None
        plan = req.plan
        if plan.compact:  # a compact document's follow-up: against its kept context (prefix_cache.py)
            if not self.compact_reuse:
                return None
            return self.prefix_cache.match(req.prompt(), 0, compact=True)
        if plan.sparse_decode:
            return None  # sparse decode selects from the head's queries, which are not cached
        return self.prefix_cache.match(req.prompt(), cache_split(plan))

    def _make_room(self, req: Request) -> tuple[CacheHit | None, HostRestore | None] | None:
        """Whether the request's blocks fit now, evicting prefix-cache entries (the one it would reuse last): its hit
        (a host one claimed on the device, with the copy that fills it), or None when it must wait."""
        fits_now, need_of = self.kv.fits_now, self.admission.blocks_needed
        hit = self.cache_hit(req)
        if hit is not None and hit.host is not None:  # in the host tier: back to the device first
            h = hit.host
            # the entry's blocks, then the request's as with that entry on the device (less what it shares)
            need = h.num_blocks + need_of(req, hit.as_restored())
            if fits_now(need) or self.prefix_cache.make_room(need, keep_host=h):
                return self.prefix_cache.claim(hit)
            if self.kv.fits_ever(need):
                return None  # wait for running requests to give blocks back
            hit = None  # never with the entry restored: prefill from scratch below
        need = need_of(req, hit)
        if fits_now(need):
            return hit, None
        if self.prefix_cache is None:
            return None
        if self.prefix_cache.make_room(need, keep=hit.entry if hit else None):
            return hit, None
        # the kept entry is in the way: evict it too and prefill from scratch
        return (None, None) if self.prefix_cache.make_room(need_of(req, None)) else None

    # ---- update -----------------------------------------------------------------------------------------------
    def update(self, result: StepResult) -> None:
        """Commit a step's outcome: completed prefills start decoding, decoded sequences take their new position,
        finished ones leave (blocks freed, prompt into the prefix cache)."""
        if result.prefilled is not None:
            self._complete_prefill(result.prefilled)
        for s in result.decoded:
            if s.kv is not None:
                s.kv.commit_token()
        for s in result.finished:
            self._retire(s)

    def _complete_prefill(self, work: PrefillWork) -> None:
        req = work.request
        if self.prefilling is work:
            self.prefilling = None
        first = req.seqs[0]
        self.kv.release_scratch(first.kv)
        for s in req.seqs[1:]:
            s.kv = self.kv.fork(first.kv)
        for s in req.seqs:
            s.status = Status.RUNNING
            self.running.append(s)

    def _retire(self, seq: Sequence) -> None:
        req = seq.request
        if seq in self.running:
            self.running.remove(seq)
        if self.prefilling is not None and self.prefilling.request is req:
            self.prefilling = None  # aborted or failed mid-prefill
        work = self.admitted.get(req.request_id)
        if (self.prefix_cache is not None and work is not None and req.cache_prompt and not req.prompt_cached
                and seq.finish_reason != "error" and seq.kv is not None and req.prefill_info is not None):
            entry = self.prefix_cache.insert(req.prompt(), cache_split(work.plan), seq.kv, work.plan.selected)
            req.prompt_cached = entry is not None
        self.kv.free(seq.kv)  # the prefix cache holds its own references to the prompt's blocks
        seq.kv = None
        if req.finished:
            self.admitted.pop(req.request_id, None)
