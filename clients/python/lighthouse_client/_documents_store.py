"""The /v1/documents calls under `documents.upload`, `list`, `retrieve`, `update` and `delete`, for both clients.

An upload is one POST; with a progress callback it is sent with `stream: true` and the answer is the server's
server-sent events (`document.progress` events while the document prefills, then the document, then [DONE]), read
through the client's own `Stream` / `AsyncStream`: an error event raises the typed error the same failure has as an
HTTP answer, and a refusal before the stream (a bad field, 507 over the document budget) is that HTTP answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._base_client import NotGiven, TimeoutTypes
from ._exceptions import APIError
from ._requester import Requester
from ._streaming import AsyncStream, Stream
from .types import DocumentDeleted, DocumentInfo, DocumentList, DocumentProgress

Timeout = TimeoutTypes | NotGiven
# Called with each DocumentProgress of a streamed upload. `AsyncClient`'s upload also awaits what it returns when that
# is awaitable (an `async def` callback); an exception from it closes the stream, which cancels the upload.
ProgressCallback = Callable[[DocumentProgress], object]


def upload_body(text: str | None, file: str | Path | None, name: str | None, ttl_s: float | None,
                kv_mode: str | None, system: str | None) -> dict[str, Any]:  # fmt: skip
    if (text is None) == (file is None):
        raise ValueError("give the document as text or as a file path, one of them")
    if file is not None:
        text = Path(file).read_text(encoding="utf-8")
        name = name or Path(file).name
    body: dict[str, Any] = {"text": text, "system": system}
    for key, value in (("name", name), ("ttl_s", ttl_s), ("kv_mode", kv_mode)):
        if value is not None:
            body[key] = value
    return body


class DocumentStore:
    """upload, list, retrieve, update and delete; each returns what the client's `_request` returns (the result on
    `Client`, an awaitable of it on `AsyncClient`)."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def upload(self, body: dict[str, Any], timeout: Timeout) -> Any:
        return self._client._request("POST", "/v1/documents", body=body, cast=DocumentInfo, timeout=timeout)

    def upload_stream(self, body: dict[str, Any], timeout: Timeout) -> Any:
        """The upload as a stream of raw event payloads (for `finish_upload` / `afinish_upload`)."""
        return self._client._request("POST", "/v1/documents", body={**body, "stream": True}, stream=True,
                                     timeout=timeout)  # fmt: skip

    def list(self, timeout: Timeout) -> Any:
        return self._client._request("GET", "/v1/documents", cast=DocumentList, timeout=timeout)

    def retrieve(self, document_id: str, timeout: Timeout) -> Any:
        return self._client._request("GET", f"/v1/documents/{document_id}", cast=DocumentInfo, timeout=timeout)

    def update(self, document_id: str, ttl_s: float | None, timeout: Timeout) -> Any:
        return self._client._request("PATCH", f"/v1/documents/{document_id}", body={"ttl_s": ttl_s},
                                     cast=DocumentInfo, timeout=timeout)  # fmt: skip

    def delete(self, document_id: str, timeout: Timeout) -> Any:
        return self._client._request("DELETE", f"/v1/documents/{document_id}", cast=DocumentDeleted,
                                     timeout=timeout)  # fmt: skip


def upload_event(payload: Any) -> DocumentProgress | DocumentInfo:
    """One event of a streamed upload: a `document.progress` event's `prompt_progress`, else the document."""
    if isinstance(payload, dict) and payload.get("object") == "document.progress":
        return DocumentProgress.model_validate(payload.get("prompt_progress") or {})
    return DocumentInfo.model_validate(payload)


def finish_upload(stream: Stream[Any], on_progress: ProgressCallback) -> DocumentInfo:
    """Read a `Stream` of an upload's events to its end, calling `on_progress` for each progress event; the
    document. The stream is closed on the way out, also when `on_progress` raises."""
    with stream:
        info = None
        for payload in stream:
            event = upload_event(payload)
            if isinstance(event, DocumentProgress):
                on_progress(event)
            else:
                info = event
    return _the_document(info, stream)


async def afinish_upload(stream: AsyncStream[Any], on_progress: ProgressCallback) -> DocumentInfo:
    """As `finish_upload`, for an `AsyncStream`; an awaitable that `on_progress` returns is awaited."""
    async with stream:
        info = None
        async for payload in stream:
            event = upload_event(payload)
            if isinstance(event, DocumentProgress):
                result = on_progress(event)
                if inspect.isawaitable(result):
                    await result
            else:
                info = event
    return _the_document(info, stream)


def _the_document(info: DocumentInfo | None, stream: Stream[Any] | AsyncStream[Any]) -> DocumentInfo:
    if info is None:
        raise APIError("The upload's event stream ended without the document", request=stream.response.request)
    return info


def refuse_async_callback(on_progress: ProgressCallback | None) -> None:
    """`Client`'s upload cannot await a callback: say so before the upload starts, not with an unawaited coroutine."""
    if on_progress is not None and inspect.iscoroutinefunction(on_progress):
        raise TypeError("on_progress is an async function; Client.documents.upload calls it without awaiting it "
                        "(AsyncClient.documents.upload awaits it)")
