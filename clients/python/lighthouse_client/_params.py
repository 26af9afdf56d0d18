"""Request bodies. Parameters left as None are not sent, so the server's defaults apply."""

from __future__ import annotations

from typing import Any, Mapping, Optional


def build_body(params: Mapping[str, Any], extra_body: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Drop None values; `extra_body` goes in last (and wins), as with the openai package."""
    body = {k: v for k, v in params.items() if v is not None}
    body.update(extra_body or {})
    return body


def stream_options(stream: bool, include_usage: Optional[bool]) -> Optional[dict[str, Any]]:
    if not stream or include_usage is None:
        return None
    return {"include_usage": include_usage}
