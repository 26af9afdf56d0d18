"""Connection limits below the app: a cap on the request head's size and a deadline for receiving it, so a client
that sends a 16 MiB header or trickles one byte at a time (slowloris) is cut off while everyone else is served.

uvicorn's httptools parser has neither; its h11 parser has the size cap (`h11_max_incomplete_event_size`), and
`GuardedH11Protocol` adds the deadline: from the moment a connection opens, or its previous response ends, the
whole head (request line and headers) must arrive within `header_timeout_s`, else the connection is closed. The
body's deadline is the app's (`middleware.BodyLimitMiddleware`, 408). Idle keep-alive connections close after
uvicorn's `timeout_keep_alive`.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lighthouse_server.errors import error_body

MAX_HEADER_BYTES = 64 << 10  # request line + headers: a long API key or cookie fits many times over
KEEP_ALIVE_S = 5  # uvicorn's default: an idle keep-alive connection closes after this long


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head deadline above, and its refusals in OpenAI's error shape."""

    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_size(data) > MAX_HEADER_BYTES:
            # h11 checks its limit only while a head is incomplete: one that arrives whole in a read passes
            self._refuse(431, f"the request line and headers exceed the {MAX_HEADER_BYTES >> 10} KiB limit",
                         "headers_too_large")
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head has arrived
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # the next request's head gets the same deadline
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _head_size(self, data: bytes) -> int:
        """Bytes of the request head so far (up to its blank line), counting what h11 holds and `data`."""
        buffered = self.conn.trailing_data[0] + data
        end = buffered.find(b"\r\n\r\n")
        return len(buffered) if end < 0 else end + 4

    def _cancel_head_timer(self) -> None:
        timer, self._head_timer = getattr(self, "_head_timer", None), None
        if timer is not None:
            timer.cancel()

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.trailing_data[0]:  # part of a head arrived: say why before closing
                self._refuse(408, f"the request headers did not arrive within {self.header_timeout_s:g} s",
                             "request_timeout")
            else:
                self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request head (malformed, or over its size limit while incomplete)."""
        if len(self.conn.trailing_data[0]) > MAX_HEADER_BYTES:
            self._refuse(431, f"the request line and headers exceed the {MAX_HEADER_BYTES >> 10} KiB limit",
                         "headers_too_large")
        else:
            self._refuse(400, "malformed HTTP request", "invalid_http")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Write a complete error response by hand (no request cycle exists yet) and close the connection."""
        body = json.dumps(error_body(status, message, code=code)).encode()
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()


_REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large"}


def uvicorn_options(settings) -> dict:
    """The uvicorn.Config arguments for these limits (`shutdown.serve` passes them)."""
    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": settings.header_timeout_s})
    return {"http": protocol, "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "timeout_keep_alive": KEEP_ALIVE_S}
