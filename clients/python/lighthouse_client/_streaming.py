"""Stream / AsyncStream: iterators over an SSE response that are also context managers.

A stream is never retried: once the server has answered 200 and events flow, a broken connection raises
APIConnectionError (or APITimeoutError) from the iterator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

import httpx

from ._exceptions import APIConnectionError, APIError, APITimeoutError, make_event_error
from ._sse import ServerSentEvent, aiter_events, iter_events

T = TypeVar("T")
Parser = Callable[[Any], T]


def _decode(sse: ServerSentEvent, parse: Parser[T], response: httpx.Response) -> T | None:
    """One event -> one item; None for events to skip. Raises for an error event: the typed error (BadRequestError,
    ServiceUnavailableError, ...) the same error has as an HTTP answer, else APIError."""
    if not sse.data.strip():
        return None
    try:
        payload = sse.json()
    except json.JSONDecodeError as exc:
        raise APIError(f"Malformed event in stream: {sse.data[:200]!r}", request=response.request) from exc
    if sse.event == "error" or (isinstance(payload, dict) and "error" in payload and "choices" not in payload):
        raise make_event_error(response, payload)
    return parse(payload)


def _transport_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=request)
    return APIConnectionError(f"Connection error during stream: {exc}", request=request)


class Stream(Generic[T]):
    """Iterate to get parsed events; `with` (or `close()`) releases the connection early."""

    def __init__(self, response: httpx.Response, parse: Parser[T]) -> None:
        self.response = response
        self._parse = parse
        self._iterator = self._events()

    def _events(self) -> Generator[T, None, None]:
        try:
            for sse in iter_events(self.response.iter_lines()):
                if sse.is_done:
                    break
                item = _decode(sse, self._parse, self.response)
                if item is not None:
                    yield item
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.response.request) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._iterator)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._iterator.close()
        self.response.close()


class AsyncStream(Generic[T]):
    """`async for` to get parsed events; `async with` (or `await close()`) releases the connection early."""

    def __init__(self, response: httpx.Response, parse: Parser[T]) -> None:
        self.response = response
        self._parse = parse
        self._iterator = self._events()

    async def _events(self) -> AsyncGenerator[T, None]:
        try:
            async for sse in aiter_events(self.response.aiter_lines()):
                if sse.is_done:
                    break
                item = _decode(sse, self._parse, self.response)
                if item is not None:
                    yield item
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.response.request) from exc
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._iterator.aclose()
        await self.response.aclose()
