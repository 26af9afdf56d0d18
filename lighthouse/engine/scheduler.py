"""Scheduling policy: FCFS admission bounded by KV cache space and the batch size; prefill and decode alternate.

A step either prefills the request at the head of the queue (when its whole reservation fits now) or decodes
every running sequence together. After a prefill the next step decodes, so a stream of arrivals cannot starve
the requests already generating. The head of the queue is never skipped (no starvation of large requests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from lighthouse.engine.kv_cache import KVCacheManager
from lighthouse.engine.sequence import Request, Sequence, Status


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int,
                 make_room: Callable[[Request, int], bool] | None = None):
        self.kv = kv
        # make_room(request, nbytes): whether nbytes fit now, after freeing what may be freed (the prefix cache)
        self.make_room = make_room or (lambda _req, nbytes: kv.fits_now(nbytes))
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Sequence] = []
        self._last_was_prefill = False

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_prefill(self) -> Request | None:
        """The head of the queue if it can start now (and decode did not just get skipped), else None."""
        if not self.waiting or (self._last_was_prefill and self.running):
            self._last_was_prefill = False
            return None
        req = self.waiting[0]
        n = len(req.seqs)
        if len(self.running) + n > self.max_num_seqs or not self.make_room(req, n * req.reserve_bytes):
            self._last_was_prefill = False
            return None
        self.waiting.popleft()
        self._last_was_prefill = True
        return req

    def decode_batch(self) -> list[Sequence]:
        return [s for s in self.running if s.status is Status.RUNNING][: self.max_num_seqs]

    def start(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.status = Status.RUNNING
            self.running.append(s)

    def retire(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)

    def remove_waiting(self, request: Request) -> bool:
        try:
            self.waiting.remove(request)
            return True
        except ValueError:
            return False
