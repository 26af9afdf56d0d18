"""The scheduler: admission and each request's lifecycle. `schedule()` says what to run this step, `update()` takes
what came of it.

A step either runs a piece of a prefill or decodes every running sequence together. A prefill starts for the
request at the head of the queue when its whole reservation fits now (after evicting prefix-cache entries, the one
it would reuse last) and runs in pieces (the engine bounds a piece's time) until it is done; one long prefill is in
progress at a time. After a prefill piece the next step decodes, so neither a long prompt nor a stream of arrivals
stalls the requests already generating for more than one piece. The head of the queue is never skipped for room.

Two classes, so that a short prompt waits for what is ahead of it in its class, not for every long prefill:
prompts of at most `express_tokens` tokens are short. While a prefill is in progress, the oldest short request (its
class in arrival order: a later one never jumps it) is prefilled whole between two pieces (an express prefill),
however many long prompts arrived before it. Express prefills come in rounds: back to back (a decode step of the
whole batch between two short prefills would cost more than the prefill itself) while they take at most
`express_tokens` prompt tokens in all (at least one runs); then a decode step, the next piece of the prefill in
progress, a decode step, the next round. So long prompts still progress (a piece per round), and the running
sequences wait at most one piece or one round (at most `express_tokens` prompt tokens) between two decode steps.
Long prompts start one at a time, in arrival order, as the head of the queue once no prefill is in progress. With
`express_tokens` 0 there is one class and one prefill at a time.

In-flight sharing: a request whose prompt would reuse more of a prefill in progress than of any prefix-cache entry
waits for that prefill (prefix_cache.py: `begin_prefill`, `in_flight_gain`) and is then admitted with its entry as a
hit; the entry is inserted when the prefill ends, not when its request finishes. Requests behind a waiting one are
not held up by it. If the prefill is aborted or fails, the waiting request prefills for itself.

Admitting a request allocates its first sequence's tables now (sharing a prefix-cache hit's blocks); what must be
copied before its prefill runs (a host-tier entry coming back, the partly filled last block of a hit) is part of
the schedule, for the engine to run. `update` commits what a step's sampling produced (one more position per
decoded sequence: lengths never move before sampling succeeded), completes prefills (the scratch given back, the
other choices forked), and retires finished sequences: their blocks are freed and the prompt stays in the prefix
cache by reference.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from lighthouse.engine.admission import Admission, cache_split, pinned_refusal, spec_with_hit
from lighthouse.engine.cache.host_tier import HostRestore
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.prefix_cache import CacheHit, PrefixCache
from lighthouse.engine.decode_slices import DecodeSlicer
from lighthouse.engine.request import Request, Sequence, Status
from lighthouse.engine.step_work import PrefillWork, SchedulerOutput, StepResult

__all__ = ["PrefillWork", "Scheduler", "SchedulerOutput", "StepResult"]


class Scheduler:
    def __init__(self, kv: KVCacheManager, prefix_cache: PrefixCache | None, *, max_num_seqs: int,
                 express_tokens: int = 0, compact_reuse: bool = True, decode_budget_ms: float = 0.0):
        self.kv, self.prefix_cache = kv, prefix_cache
        # whether a compact entry's context can be continued (not where its K were rotated with the op's own
        # frequencies: lighthouse.rope "after_select" with rope_freqs "unscaled")
        self.compact_reuse = compact_reuse
        self.admission = Admission(kv.shape)
        self.max_num_seqs = max_num_seqs
        self.express_tokens = express_tokens  # 0: no express prefills
        self.waiting: deque[Request] = deque()
        self.refused: list[tuple[Request, str]] = []  # never to fit beside the pinned documents: (request, why)
        self.running: list[Sequence] = []
        self.prefilling: PrefillWork | None = None  # the long prefill in progress
        self.admitted: dict[str, PrefillWork] = {}  # request id -> its prefill, until the request finishes
        self._last = "decode"  # what the last step ran: "piece" (of the prefill in progress), "express", "decode"
        self._express_spent = 0  # prompt tokens of express prefills since the last piece of the prefill in progress
        self.slicer = DecodeSlicer(decode_budget_ms / 1000)  # decode steps within a budget (decode_slices.py)

    # ---- queue ------------------------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        if not self._refuse_if_never(request):
            self.waiting.append(request)

    def take_refused(self) -> list[tuple[Request, str]]:
        """Requests that can never be admitted while the pinned documents stay, with why (the engine fails them)."""
        out, self.refused = self.refused, []
        return out

    def remove_waiting(self, request: Request) -> bool:
        try:
            self.waiting.remove(request)
            return True
        except ValueError:
            return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling or self.refused)

    def has_decodable(self) -> bool:
        return any(s.status is Status.RUNNING for s in self.running)

    # ---- schedule ---------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        if self.prefilling is not None:
            return self._beside_prefill()
        work = self._next_prefill()
        if work is not None:
            self.prefilling, self._last, self._express_spent = work, "piece", 0
            return SchedulerOutput(prefill=work)
        self._last = "decode"
        return SchedulerOutput(decode=self._batch())

    def _beside_prefill(self) -> SchedulerOutput:
        """A prefill in progress: a round of express prefills (back to back, within the round's token budget), a
        decode step, its next piece, a decode step, the next round. Decode steps only where sequences run."""
        decodable = self.has_decodable()
        if self._last == "piece" and decodable:
            self._last = "decode"
            return SchedulerOutput(decode=self._batch())
        express = self._next_express()
        if express is not None:
            self._last = "express"
            return SchedulerOutput(prefill=express)
        if self._last == "express" and decodable:
            self._last = "decode"
            return SchedulerOutput(decode=self._batch())
        self._last, self._express_spent = "piece", 0  # its turn: the next round's budget starts afresh
        return SchedulerOutput(prefill=self.prefilling)

    def steady(self, batch: list[Sequence]) -> bool:
        """Whether the next step would decode `batch` again, as it is: nothing waits, prefills or was refused, and the
        running sequences are the batch, whole (engine/overlap.py launches that step before this one's tokens are
        read)."""
        if self.waiting or self.prefilling is not None or self.refused:
            return False
        running = [s for s in self.running if s.status is Status.RUNNING][: self.max_num_seqs]
        same = len(running) == len(batch) and all(a is b for a, b in zip(running, batch))
        return same and self.slicer.whole(len(batch))

    def _batch(self) -> list[Sequence]:
        return self.slicer.pick([s for s in self.running if s.status is Status.RUNNING][: self.max_num_seqs])

    def _next_prefill(self) -> PrefillWork | None:
        """The head of the queue, admitted, if it can start now (and decode did not just get skipped), else None."""
        if not self.waiting or (self._last != "decode" and self.running):
            return None
        req = self.waiting[0]
        fits = len(self.running) + len(req.seqs) <= self.max_num_seqs
        return self._admit(req) if fits and not self._awaits_in_flight(req) else None

    def _next_express(self) -> PrefillWork | None:
        """The oldest short request (not waiting for a prefill in progress), if this round's express budget has room
        for it and it fits: to prefill whole beside the prefill in progress."""
        req = next((r for r in self.waiting if len(r.prompt_ids) <= self.express_tokens
                    and not self._awaits_in_flight(r)), None)
        if req is None or (self._express_spent and self._express_spent + len(req.prompt_ids) > self.express_tokens):
            return None
        if len(self.running) + len(req.seqs) > self.max_num_seqs:
            return None
        work = self._admit(req)
        if work is not None:
            work.whole = True
            self._express_spent += len(req.prompt_ids) - work.cached
        return work

    def _awaits_in_flight(self, req: Request) -> bool:
        """Whether a prefill in progress will leave an entry that this request reuses more of than of any now."""
        key = self._cache_key(req)
        if key is None or not self.prefix_cache.in_flight:
            return False
        hit = self.prefix_cache.match(req.prompt(), *key)
        return self.prefix_cache.in_flight_gain(req.prompt(), *key, hit.tokens if hit is not None else 0)

    # ---- admission --------------------------------------------------------------------------------------------
    def _admit(self, req: Request) -> PrefillWork | None:
        """Make room for the request and allocate its first sequence's tables; None if it must wait."""
        room = self._make_room(req)
        if room is None:
            if self._refuse_if_never(req):
                self.waiting.remove(req)
            return None
        hit, restore = room
        self.waiting.remove(req)
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
            first.kv.ctx_spans = e.ctx_spans  # read only: shared
        self.admitted[req.request_id] = work
        if self.prefix_cache is not None and req.cache_prompt:
            work.pending = self.prefix_cache.begin_prefill(req.prompt(), cache_split(work.plan), work.plan.compact,
                                                           req.options.cache_salt)
        return work

    def _refuse_if_never(self, req: Request) -> bool:
        """Whether the request can never fit beside the pinned documents (then it is refused, not left waiting)."""
        if self.prefix_cache is None:
            return False
        tokens, held = self.prefix_cache.pinned()
        hit = self.cache_hit(req) if tokens else None
        why = pinned_refusal(req, hit if hit is not None and hit.entry is not None and hit.entry.pins else None,
                             self.kv.shape, self.kv.allocator.usable, tokens, held)
        if why is not None:
            self.refused.append((req, why))
        return why is not None

    def cache_hit(self, req: Request) -> CacheHit | None:
        """The prefix-cache entry (on the device or in the host tier) the request can reuse, if any."""
        key = self._cache_key(req)
        return self.prefix_cache.match(req.prompt(), *key) if key is not None else None

    def _cache_key(self, req: Request) -> tuple[int, bool, str | None] | None:
        """(split, compact, salt) of the entries the request may reuse; None: it reuses none."""
        if self.prefix_cache is None or not req.cache_prompt:
            return None
        plan, salt = req.plan, req.options.cache_salt
        if plan.compact:  # a compact document's follow-up: against its kept context (prefix_cache.py)
            return (0, True, salt) if self.compact_reuse else None
        if plan.sparse_decode:
            return None  # sparse decode selects from the head's queries, which are not cached
        return cache_split(plan), False, salt

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
        if result.decoded:
            self.slicer.done(len(result.decoded))
        for s, n in zip(result.decoded, result.committed or [1] * len(result.decoded)):
            if s.kv is not None:
                s.kv.commit_token(n)
        for s in result.finished:
            self._retire(s)

    def _complete_prefill(self, work: PrefillWork) -> None:
        req = work.request
        if self.prefilling is work:
            self.prefilling = None
        first = req.seqs[0]
        self.kv.release_scratch(first.kv)
        self._keep_prompt(work)
        for s in req.seqs[1:]:
            s.kv = self.kv.fork(first.kv)
        for s in req.seqs:
            s.status = Status.RUNNING
            self.running.append(s)

    def _keep_prompt(self, work: PrefillWork) -> None:
        """The prompt into the prefix cache the moment its prefill ends (usable by the next step's admissions)."""
        if self.prefix_cache is None:
            return
        self.prefix_cache.end_prefill(work.pending)
        work.pending = None
        req = work.request
        if not req.cache_prompt or req.prompt_cached:
            return
        held = list(self.prefix_cache.entries)
        entry = self.prefix_cache.insert(req.prompt(), cache_split(work.plan), req.seqs[0].kv, work.plan.selected,
                                         any_length=req.options.pin_prompt, salt=req.options.cache_salt)
        req.prompt_cached = entry is not None
        work.entry = entry if entry is not None and all(entry is not e for e in held) else None
        if entry is not None and req.options.pin_prompt:  # a document's upload (engine/documents.py)
            entry.pins += 1

    def _retire(self, seq: Sequence) -> None:
        req = seq.request
        if seq in self.running:
            self.running.remove(seq)
        if self.prefilling is not None and self.prefilling.request is req:
            self.prefilling = None  # aborted or failed mid-prefill
        work = self.admitted.get(req.request_id)
        if work is not None and self.prefix_cache is not None:
            self.prefix_cache.end_prefill(work.pending)  # mid-prefill: whoever waited for it prefills for itself
            work.pending = None
            e = work.entry
            if seq.finish_reason == "error" and e is not None and not e.pins:  # a failed request's prompt: not kept
                self.prefix_cache.discard(e)
                work.entry = None
        self.kv.free(seq.kv)  # the prefix cache holds its own references to the prompt's blocks
        seq.kv = None
        if req.finished:
            self.admitted.pop(req.request_id, None)
