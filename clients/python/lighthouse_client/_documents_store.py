"""The /v1/documents calls under `documents.upload`, `list`, `retrieve` and `delete`, for both clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._base_client import NotGiven, TimeoutTypes
from ._requester import Requester
from .types import DocumentDeleted, DocumentInfo, DocumentList

Timeout = TimeoutTypes | NotGiven


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
    """upload, list, retrieve and delete; each returns what the client's `_request` returns (the result on
    `Client`, an awaitable of it on `AsyncClient`)."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def upload(self, body: dict[str, Any], timeout: Timeout) -> Any:
        return self._client._request("POST", "/v1/documents", body=body, cast=DocumentInfo, timeout=timeout)

    def list(self, timeout: Timeout) -> Any:
        return self._client._request("GET", "/v1/documents", cast=DocumentList, timeout=timeout)

    def retrieve(self, document_id: str, timeout: Timeout) -> Any:
        return self._client._request("GET", f"/v1/documents/{document_id}", cast=DocumentInfo, timeout=timeout)

    def delete(self, document_id: str, timeout: Timeout) -> Any:
        return self._client._request("DELETE", f"/v1/documents/{document_id}", cast=DocumentDeleted,
                                     timeout=timeout)  # fmt: skip
