"""Plain ASGI middleware (streaming responses pass untouched): the request body limits (413, 408), the shutdown gate
(503 while draining) and the catch-all that turns an unexpected exception into a 500 in OpenAI's error shape.

Order, outermost first: CORS (so every error below carries its headers), CatchAll, ShutdownGate, BodyLimit.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lighthouse_server.errors import error_body, error_response

log = logging.getLogger("lighthouse_server.errors")


class CatchAll:
    """An exception that escapes a route becomes one logged traceback and a 500 response, never a re-raise: the
    server would otherwise close the keep-alive connection without saying so, and the client's next request on
    it would be reset. After a response has started (a stream), the exception is logged and the response ends."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, event_stream = False, False

        async def tracking_send(message: Message) -> None:
            nonlocal started, event_stream
            if message["type"] == "http.response.start":
                started = True
                event_stream = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                   for k, v in message.get("headers", []))
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await error_response(500, "internal server error", code="internal_error")(scope, receive, send)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when its graceful-shutdown timeout ends (normally the drain
            # has ended every request before that): one line, and the client still hears why
            log.warning("%s %s cut at shutdown", scope.get("method"), scope.get("path"))
            await _tell_cut(send, started, event_stream)


async def _tell_cut(send: Send, started: bool, event_stream: bool) -> None:
    msg = "the server shut down before this request finished; retry it"
    try:
        if not started:
            body = json.dumps(error_body(503, msg, code="shutting_down")).encode()
            await asyncio.wait_for(send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"retry-after", b"1"), (b"connection", b"close")]}), 1)
            await asyncio.wait_for(send({"type": "http.response.body", "body": body}), 1)
        elif event_stream:
            event = f"data: {json.dumps(error_body(503, msg, code='shutting_down'))}\n\ndata: [DONE]\n\n"
            await asyncio.wait_for(send({"type": "http.response.body", "body": event.encode()}), 1)
    except (Exception, asyncio.CancelledError):  # the connection is gone or not writable: nothing more to say
        pass


class ShutdownGate:
    """While the server drains (after the pre-stop delay), new requests get 503 + Retry-After + Connection: close,
    except the probes (/health, /ready, /metrics). `is_draining()` is read per request."""

    PROBES = ("/health", "/ready", "/metrics")

    def __init__(self, app: ASGIApp, is_draining, retry_after_s: int = 1):
        self.app, self.is_draining, self.retry_after_s = app, is_draining, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.is_draining() and scope.get("path") not in self.PROBES:
            response = error_response(503, "the server is shutting down; retry on another replica",
                                      code="shutting_down",
                                      headers={"Retry-After": str(self.retry_after_s), "Connection": "close"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


RELEASE_AFTER_BYTES = 8 << 20  # after a body this large, hand freed memory back to the OS


def _release_memory() -> None:
    """glibc keeps freed heap memory for reuse; a large body's JSON parse leaves hundreds of MB that way.
    malloc_trim returns it (elsewhere than glibc: nothing to do)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class BodyLimitMiddleware:
    """The request body: at most `max_bytes` (413), all of it within `timeout_s` of the headers (408), then
    replayed to the app. Both refusals close the connection, since the rest of the body is never read."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        # Read the body here (FastAPI would buffer it anyway) so the limit holds without a Content-Length too.
        chunks, seen, more = [], 0, True
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        while more:
            try:
                msg = await asyncio.wait_for(receive(), None if deadline is None else
                                             max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                return await _refuse(send, 408, f"the request body did not arrive within {self.timeout_s:g} s",
                                     "request_timeout")
            if msg["type"] != "http.request":  # client went away while sending
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self._reject(send)
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: http.disconnect when the client leaves

        try:
            await self.app(scope, replay, send)
        finally:
            if len(body) >= RELEASE_AFTER_BYTES:
                del body, chunks
                await asyncio.to_thread(_release_memory)  # off the event loop: a big heap takes a while

    async def _reject(self, send: Send) -> None:
        await _refuse(send, 413, f"request body exceeds the {self.max_bytes / (1 << 20):g} MiB limit",
                      "request_too_large")


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    """An error response with Connection: close (the rest of the body is never read)."""
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
