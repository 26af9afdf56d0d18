"""Server-sent events: a line decoder that follows the WHATWG event-stream rules the servers use."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class ServerSentEvent:
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    @property
    def is_done(self) -> bool:
        return self.data.strip() == "[DONE]"

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Feed lines (without their newline); an event comes out at each blank line."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def decode(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._flush()
        if line.startswith(":"):  # comment / keep-alive
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def flush(self) -> ServerSentEvent | None:
        """The event pending when the stream ends without a final blank line."""
        return self._flush()

    def _flush(self) -> ServerSentEvent | None:
        if not self._data and self._event is None:
            return None
        sse = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
        self._data, self._event, self._retry = [], None, None
        return sse


def iter_events(lines: Iterator[str]) -> Iterator[ServerSentEvent]:
    decoder = SSEDecoder()
    for line in lines:
        sse = decoder.decode(line.rstrip("\r\n"))
        if sse is not None:
            yield sse
    tail = decoder.flush()
    if tail is not None:
        yield tail


async def aiter_events(lines: AsyncIterator[str]) -> AsyncIterator[ServerSentEvent]:
    decoder = SSEDecoder()
    async for line in lines:
        sse = decoder.decode(line.rstrip("\r\n"))
        if sse is not None:
            yield sse
    tail = decoder.flush()
    if tail is not None:
        yield tail
