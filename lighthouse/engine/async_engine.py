"""Async wrapper: the engine's step loop runs in one background thread; each request gets an asyncio queue.

Nothing here touches tensors on the event loop: `submit` validates (cheap) and hands the request to the
engine thread, which steps the engine and posts every output to the owning request's queue with
`loop.call_soon_threadsafe`. A long prefill therefore never blocks /health. Closing a stream before it
finished aborts the request, which frees its cache at the next layer or step.

If the engine thread dies (an error that leaves the device unusable, or a bug outside one request's step),
every request in flight gets a final error output, `is_alive()` turns false and `dead_reason` says why; the
server turns /health 503 and exits non-zero, since only a restart recovers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.errors import (ENGINE_DEAD, INTERNAL_ERROR, SHUTTING_DOWN, EngineStopped, QueueFull,
                                     is_device_fatal)
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.request import PromptProgress, Request, RequestOutput

log = logging.getLogger(__name__)


@dataclass
class _Route:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    remaining: int  # choices not finished yet


class RequestStream:
    """Async iterator over a request's outputs (all choices interleaved); `close()` aborts if unfinished."""

    def __init__(self, engine: "AsyncEngine", request_id: str, n: int, q: asyncio.Queue):
        self._engine, self.request_id, self._n, self._queue = engine, request_id, n, q
        self._finished = 0

    @property
    def done(self) -> bool:
        return self._finished >= self._n

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[RequestOutput]:
        while not self.done:
            out: RequestOutput = await self._queue.get()
            if out.finished:
                self._finished += 1
            yield out

    def close(self) -> None:
        if not self.done:
            self._engine.abort(self.request_id)
            self._finished = self._n


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_waiting: int = 256):
        self.engine = engine
        self.max_waiting = max_waiting
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._routes: dict[str, _Route] = {}
        self._routes_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = 0  # submitted, not yet queued by the engine thread
        self.accepting = False
        self.dead_reason: str | None = None  # set when the engine thread died
        engine.progress_callback = self._on_progress

    # ---- what the server reads --------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def stats(self) -> dict:
        s = self.engine.stats()
        s["waiting"] += self._pending
        return s

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lighthouse-engine", daemon=True)
        self._thread.start()
        self.accepting = True

    @property
    def in_flight(self) -> int:
        return len(self._routes)

    async def drain(self, timeout_s: float = 30.0, cut_short: Callable[[], bool] = lambda: False) -> int:
        """Stop admitting, let in-flight requests finish for up to `timeout_s` (or until `cut_short()`), then fail
        the rest with a `shutting_down` error (a stream gets it as its last event). Returns how many failed."""
        self.accepting = False
        deadline = time.monotonic() + timeout_s
        while self._routes and time.monotonic() < deadline and not cut_short():
            await asyncio.sleep(0.05)
        deadline = time.monotonic()
        cut = list(self._routes)
        for rid in cut:
            self.abort(rid, error=f"the server shut down before this request finished (drain timeout {timeout_s:g}s); "
                                  "retry it", code=SHUTTING_DOWN)
        while self._routes and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.02)
        return len(cut)

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """`drain(timeout_s)`, then stop the engine thread."""
        await self.drain(timeout_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)

    # ---- requests ---------------------------------------------------------------------------------------------
    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
               options: RequestOptions | None = None) -> RequestStream:
        """Validate and queue (raises InvalidRequest, QueueFull, EngineStopped); iterate the returned stream."""
        self._check_accepting()
        return self._queue(self.engine.make_request(request_id, prompt_ids, params, options), len(prompt_ids))

    async def submit_async(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                           options: RequestOptions | None = None) -> RequestStream:
        """As `submit`, for the event loop: a request with structured output compiles its grammar in a worker thread
        (a large schema takes a while), so other requests are not held up meanwhile."""
        self._check_accepting()
        if options is not None and options.structured is not None:
            req = await asyncio.to_thread(self.engine.make_request, request_id, prompt_ids, params, options)
            self._check_accepting()  # again: the state may have changed while it compiled
        else:
            req = self.engine.make_request(request_id, prompt_ids, params, options)
        return self._queue(req, len(prompt_ids))

    def _check_accepting(self) -> None:
        if not self.accepting or not self.is_alive():
            raise EngineStopped("the server is shutting down or the engine is not running")
        stats = self.stats()
        free_slots = max(0, self.engine.config.max_num_seqs - stats["running"])
        if stats["waiting"] >= self.max_waiting + free_slots:  # max_waiting 0: no queue beyond the free slots
            raise QueueFull(f"too many requests waiting (the queue holds {self.max_waiting} beyond the running "
                            "batch); retry later")

    def _queue(self, req: Request, n_prompt: int) -> RequestStream:
        """Route a validated request's outputs to a new stream and hand it to the engine thread."""
        request_id = req.request_id
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self._routes_lock:
            if self.dead_reason is not None:  # died since the check above: its last outputs went out already
                raise EngineStopped(f"the engine stopped ({self.dead_reason})")
            self._routes[request_id] = _Route(loop, q, len(req.seqs))
            self._pending += 1

        def enqueue() -> None:
            self._pending -= 1
            try:
                self.engine.enqueue(req)
            except Exception as exc:  # duplicate id: fail just this stream
                self._post(RequestOutput(request_id, 0, [], "", None, True, "error", n_prompt, 0, error=str(exc)),
                           force_close=True)

        self._inbox.put(enqueue)
        self._wake.set()
        return RequestStream(self, request_id, len(req.seqs), q)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the engine thread between two steps (what touches the cache, e.g. engine/documents.py) and
        return its result (or raise its exception)."""
        if not self.is_alive():
            raise EngineStopped("the engine is not running")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if not fut.done():
                fut.set_exception(exc) if exc is not None else fut.set_result(result)

        def run() -> None:
            try:
                result, exc = fn(), None
            except Exception as e:  # the caller's to handle; the engine goes on
                result, exc = None, e
            try:
                loop.call_soon_threadsafe(settle, result, exc)
            except RuntimeError:  # the loop is closed
                pass

        self._inbox.put(run)
        self._wake.set()
        return await fut

    def abort(self, request_id: str, *, error: str | None = None, code: str | None = None) -> None:
        """Stop a request; with `error`, it ends with that error (and `code`) rather than as aborted."""
        self._inbox.put(lambda: self.engine.abort_request(request_id, error=error, code=code))
        self.engine.abort_request(request_id, error=error, code=code)  # also flags a prefill in progress now
        self._wake.set()

    # ---- engine thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the thread is dying: nobody may wait forever for an output
            self.accepting = False
            with self._routes_lock:
                self.dead_reason = f"{type(exc).__name__}: {exc}"
            log.critical("the engine thread died (%s); failing the %d requests in flight", self.dead_reason,
                         len(self._routes), exc_info=True)
            self._fail_routes(f"the engine stopped ({type(exc).__name__}); the server is restarting", ENGINE_DEAD)

    def _loop(self) -> None:
        while not self._stop.is_set():
            while True:
                try:
                    self._inbox.get_nowait()()
                except queue.Empty:
                    break
            if not self.engine.has_unfinished():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # outside any one request's step (those fail alone, in the engine)
                if is_device_fatal(exc):
                    raise
                log.exception("engine step failed; failing the requests in flight")
                outputs = self._fail_all(f"internal error in the engine step ({type(exc).__name__})")
            for out in outputs:
                self._post(out)

    def _fail_all(self, message: str) -> list[RequestOutput]:
        for rid in list(self._routes):
            self.engine.abort_request(rid, error=message, code=INTERNAL_ERROR)
        return self.engine.apply_aborts()

    def _fail_routes(self, message: str, code: str) -> None:
        """A final error output to every request still waiting (the engine thread is gone)."""
        with self._routes_lock:
            routes, self._routes = self._routes, {}
        for rid, route in routes.items():
            out = RequestOutput(rid, 0, [], "", None, True, "error", 0, 0, error=message, error_code=code)
            for _ in range(route.remaining):  # one finished output per choice still open
                try:
                    route.loop.call_soon_threadsafe(route.queue.put_nowait, out)
                except RuntimeError:
                    pass

    def _post(self, out: RequestOutput, *, force_close: bool = False) -> None:
        with self._routes_lock:
            route = self._routes.get(out.request_id)
            if route is None:
                return
            if out.finished:
                route.remaining -= 1
                if route.remaining <= 0 or force_close:
                    del self._routes[out.request_id]
        try:
            route.loop.call_soon_threadsafe(route.queue.put_nowait, out)
        except RuntimeError:  # the loop is closed (shutdown); nobody is listening
            pass

    def _on_progress(self, request_id: str, progress: PromptProgress) -> None:
        self._post(RequestOutput(request_id, 0, [], "", None, False, None, progress.total, 0, progress=progress))
