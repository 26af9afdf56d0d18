"""Scheduling policy: FCFS admission bounded by KV cache blocks and the batch size; prefill and decode alternate.

A step either runs a piece of a prefill or decodes every running sequence together. A prefill starts for the
request at the head of the queue (when its whole reservation fits now) and runs in pieces (prefill.py: the engine
bounds a piece's time) until it is done; one long prefill is in progress at a time. After a prefill piece the next
step decodes, so neither a long prompt nor a stream of arrivals stalls the requests already generating for more
than one piece. The head of the queue is never skipped (no starvation of large requests).

Express prefills: while a long prefill is in progress, the head of the queue, when its prompt has at most
`express_tokens` tokens and it fits, is prefilled whole between two pieces (a short question does not wait for a
512K document's prefill, as llama.cpp's and vLLM's chunked prefills let short prompts through). The queue's order
is kept: only its head goes, and a long head waits for the prefill in progress.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lighthouse.engine.sequence import Request, Sequence, Status


@dataclass
class Schedule:
    """One step's work: a request to prefill, or the sequences to decode (never both)."""

    prefill: Request | None = None
    decode: list[Sequence] | None = None
    whole: bool = False  # an express prefill: run it to the end in this step


class Scheduler:
    def __init__(self, max_num_seqs: int, make_room: Callable[[Request], bool], express_tokens: int = 0):
        # make_room(request): whether its blocks fit now, after freeing what may be freed (the prefix cache)
        self.make_room = make_room
        self.max_num_seqs = max_num_seqs
        self.express_tokens = express_tokens  # 0: no express prefills
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []
        self.prefilling: Request | None = None  # the request whose prefill is in progress
        self._last_was_prefill = False

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def has_decodable(self) -> bool:
        return any(s.status is Status.RUNNING for s in self.running)

    def schedule(self) -> Schedule:
        if self.prefilling is not None:  # a prefill in progress: its next piece, after a decode step if one waits
            if self._last_was_prefill and self.has_decodable():
                self._last_was_prefill = False
                return Schedule(decode=self._batch())
            self._last_was_prefill = True
            express = self._next_express()
            if express is not None:
                return Schedule(prefill=express, whole=True)
            return Schedule(prefill=self.prefilling)
        req = self._next_prefill()
        if req is not None:
            self.prefilling = req
            return Schedule(prefill=req)
        return Schedule(decode=self._batch() or None)

    def _batch(self) -> list[Sequence]:
        return [s for s in self.running if s.status is Status.RUNNING][: self.max_num_seqs]

    def prefill_done(self, request: Request) -> None:
        """The request's prefill finished: its sequences run (decode) from the next step."""
        if self.prefilling is request:
            self.prefilling = None
        self.start(request.seqs)

    def _next_prefill(self) -> Request | None:
        """The head of the queue if it can start now (and decode did not just get skipped), else None."""
        if not self.waiting or (self._last_was_prefill and self.running):
            self._last_was_prefill = False
            return None
        req = self.waiting[0]
        if len(self.running) + len(req.seqs) > self.max_num_seqs or not self.make_room(req):
            self._last_was_prefill = False
            return None
        self.waiting.popleft()
        self._last_was_prefill = True
        return req

    def _next_express(self) -> Request | None:
        """The head of the queue, if it is short enough to prefill whole beside the prefill in progress and fits."""
        if not self.express_tokens or not self.waiting:
            return None
        req = self.waiting[0]
        if len(req.prompt_ids) > self.express_tokens or len(self.running) + len(req.seqs) > self.max_num_seqs:
            return None
        if not self.make_room(req):
            return None
        self.waiting.popleft()
        return req

    def start(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.status = Status.RUNNING
            self.running.append(s)

    def retire(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if self.prefilling is not None and seq.request is self.prefilling:
            self.prefilling = None  # aborted or failed mid-prefill

    def remove_waiting(self, request: Request) -> bool:
        try:
            self.waiting.remove(request)
            return True
        except ValueError:
            return False
