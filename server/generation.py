"""Drive one HTTP request through the engine: submit, then stream SSE chunks or collect a whole response.

Records the metrics (TTFT, inter-token latency, e2e, token counters, prefill tokens by path) and aborts the
engine request when the client goes away: a closed SSE stream cancels the generator (its `finally` closes the
engine stream), and a non-streaming request races every wait for output against a task that listens for the
ASGI `http.disconnect` message (so a disconnect is seen at once, also while tokens keep arriving).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable

from fastapi import Request

from lighthouse.engine.errors import KV_CACHE_EXCEEDED, EngineError
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.request import RequestOutput
from lighthouse_server.errors import APIError, error_body, from_engine_error, from_failure
from lighthouse_server.metrics import Metrics
from lighthouse_server.openai_format import ChoiceState, Formatter, sse
from lighthouse_server.settings import Settings

log = logging.getLogger("lighthouse_server.requests")

DONE = "data: [DONE]\n\n"


class ClientGone(Exception):
    pass


class Generation:
    def __init__(self, engine, settings: Settings, metrics: Metrics, fmt: Formatter, prompt_ids: list[int],
                 params: SamplingParams, options: RequestOptions, *, prompt_param: str = "prompt",
                 return_progress: bool = False, pins_note: Callable[[], str] | None = None,
                 cite: Callable[[list[int]], Awaitable[list[dict]]] | None = None):
        self.engine, self.settings, self.metrics, self.fmt = engine, settings, metrics, fmt
        self.prompt_ids, self.params, self.options = prompt_ids, params, options
        self.prompt_param, self.return_progress = prompt_param, return_progress
        self.pins_note = pins_note  # () -> the caller's pinned documents, for a refusal that names what to free
        self.cite = cite  # answer ids -> the document spans it drew on (citations: true)
        self.arrival = time.monotonic()
        self.first_token: float | None = None
        self.last_token: dict[int, float] = {}
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.prefill = None  # the engine's PrefillInfo, from the first output that carries it
        self.stream = None

    async def submit(self) -> None:
        """Queue in the engine; raises APIError (400/429/503) when the engine refuses."""
        try:
            self.stream = await self.engine.submit_async(self.fmt.id, self.prompt_ids, self.params, self.options)
        except EngineError as exc:
            raise from_engine_error(exc, queue_full_status=self.settings.queue_full_status,
                                    retry_after_s=self.settings.retry_after_s, prompt_param=self.prompt_param) from None
        self.metrics.prompt_tokens.inc(len(self.prompt_ids))

    def _observe(self, out: RequestOutput) -> None:
        now = time.monotonic()
        if out.prefill is not None and out.index == 0:
            self.metrics.prefill_tokens.labels(path="sparse").inc(out.prefill.sparse_tokens)
            self.metrics.prefill_tokens.labels(path="dense").inc(out.prefill.dense_tokens)
            self.cached_tokens = out.prefill.cached_tokens
            self.prefill = out.prefill
            self.metrics.prefix_cache_hit_tokens.inc(out.prefill.cached_tokens)
        if out.token_ids:
            if self.first_token is None:
                self.first_token = now
                self.metrics.ttft.observe(now - self.arrival)
            elif out.index in self.last_token:
                self.metrics.itl.observe(now - self.last_token[out.index])
            self.last_token[out.index] = now
            self.completion_tokens += len(out.token_ids)
            self.metrics.generation_tokens.inc(len(out.token_ids))

    def _done(self, outcome: str) -> None:
        e2e = time.monotonic() - self.arrival
        self.metrics.e2e.observe(e2e)
        ttft = None if self.first_token is None else self.first_token - self.arrival
        log.info("request %s %s: prompt_tokens=%d completion_tokens=%d ttft=%s e2e=%.3fs", self.fmt.id, outcome,
                 len(self.prompt_ids), self.completion_tokens, "-" if ttft is None else f"{ttft:.3f}s", e2e)

    def _failure(self, out: RequestOutput) -> APIError:
        err = from_failure(out.error or "", out.error_code, retry_after_s=self.settings.retry_after_s)
        if err.code == KV_CACHE_EXCEEDED and self.pins_note is not None:
            err.message += " " + self.pins_note()
        return err

    async def sse(self) -> AsyncIterator[str]:
        outcome = "disconnected"
        try:
            if self.fmt.chat:
                for i in range(self.params.n):
                    yield sse(self.fmt.role_chunk(i))
            answers: dict[int, list[int]] = {}
            async for out in self.stream:
                self._observe(out)
                answers.setdefault(out.index, []).extend(out.token_ids)
                if out.progress is not None:
                    if self.return_progress:
                        yield sse(self.fmt.progress_chunk(out.progress))
                    continue
                if out.error:
                    err = self._failure(out)
                    yield sse(error_body(err.status, err.message, code=err.code))
                    outcome = "failed"
                    break
                if out.text or out.finished or (out.logprobs and self.fmt.want_logprobs):
                    yield sse(self.fmt.chunk(out.index, out.text, out.logprobs, out.finish_reason if out.finished else None))
            else:
                outcome = "finished"
                if self.cite is not None:
                    yield sse(self.fmt.citations_chunk([await self.cite(answers.get(i, []))
                                                        for i in range(self.params.n)]))
                if self.fmt.include_usage:
                    yield sse(self.fmt.usage_chunk(len(self.prompt_ids), self.completion_tokens, self.cached_tokens,
                                                   self.prefill))
            yield DONE
        finally:
            self.stream.close()
            self._done(outcome)

    async def collect(self, http_request: Request) -> dict:
        choices = [ChoiceState() for _ in range(self.params.n)]
        it = self.stream.__aiter__()
        gone = asyncio.ensure_future(_wait_for_disconnect(http_request))
        outcome = "disconnected"
        try:
            while True:
                out = await _next_or_gone(it, gone)
                if out is None:
                    break
                self._observe(out)
                if out.error:
                    outcome = "failed"
                    raise self._failure(out)
                c = choices[out.index]
                c.text += out.text
                c.token_ids += out.token_ids
                c.logprobs += out.logprobs or []
                if out.finished:
                    c.finish_reason = out.finish_reason
            if self.cite is not None:
                for c in choices:
                    c.citations = await self.cite(c.token_ids)
            outcome = "finished"
            return self.fmt.response(choices, len(self.prompt_ids), self.cached_tokens, self.prefill)
        finally:
            gone.cancel()
            self.stream.close()  # aborts the engine request (frees its cache) unless it finished
            self._done(outcome)


async def _wait_for_disconnect(http_request: Request) -> None:
    """Returns when the client goes away. The body was read already, so the server's next message is
    `http.disconnect` (uvicorn sends it as soon as the connection closes; the test client after the response)."""
    try:
        while (await http_request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # the server cannot read from the connection any more: as good as gone
        return


async def _next_or_gone(it, gone: asyncio.Future) -> RequestOutput | None:
    """The stream's next output (None at its end); raises ClientGone as soon as `gone` completes first."""
    if gone.done():
        raise ClientGone
    task = asyncio.ensure_future(it.__anext__())
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        raise ClientGone
    try:
        return task.result()
    except StopAsyncIteration:
        return None
