"""Request bodies. Parameters left as None are not sent, so the server's defaults apply."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def build_body(params: Mapping[str, Any], extra_body: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Drop None values; `extra_body` goes in last (and wins), as with the openai package."""
    body = {k: v for k, v in params.items() if v is not None}
    body.update(extra_body or {})
    return body


def stream_options(stream: bool, include_usage: bool | None) -> dict[str, Any] | None:
    if not stream or include_usage is None:
        return None
    return {"include_usage": include_usage}
