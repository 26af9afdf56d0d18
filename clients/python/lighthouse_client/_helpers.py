"""Small pieces both clients use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ._exceptions import APIConnectionError, APITimeoutError, LighthouseError
from .types import HealthStatus


def connection_error(exc: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=request)
    return APIConnectionError(f"Connection error: {exc}", request=request)


def tokenize_body(
    prompt: str | None,
    messages: Sequence[Mapping[str, Any]] | None,
    model: str | None,
    add_special_tokens: bool | None,
) -> dict[str, Any]:
    if (prompt is None) == (messages is None):
        raise ValueError("tokenize() takes exactly one of `prompt` or `messages`")
    body: dict[str, Any] = {"prompt": prompt} if messages is None else {"messages": [dict(m) for m in messages]}
    if model:
        body["model"] = model
    if add_special_tokens is not None:
        body["add_special_tokens"] = add_special_tokens
    return body


def health_status(response: httpx.Response) -> HealthStatus:
    try:
        body = response.json()
    except ValueError:
        body = {}
    fields = body if isinstance(body, dict) else {}
    fields = {k: v for k, v in fields.items() if k not in ("ok", "status_code")}
    return HealthStatus(ok=response.is_success, status_code=response.status_code, **fields)


def first_model_id(models: Any) -> str:
    if not models.data:
        raise LighthouseError("The server lists no models; pass model= to the call or the client")
    return str(models.data[0].id)
