"""What Client and AsyncClient share: configuration, headers, the retry policy, and response parsing."""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import httpx
import pydantic

from ._exceptions import APIResponseValidationError, make_status_error
from ._version import __version__

T = TypeVar("T", bound=pydantic.BaseModel)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Long documents take long to prefill: a generous read timeout, a short connect timeout.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5  # seconds; doubles per retry
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a longer Retry-After than this falls back to our own backoff
RETRY_STATUSES = frozenset({408, 409, 429})


class NotGiven:
    """Sentinel for "use the client's setting" where None means something (timeout=None: no timeout)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()
TimeoutTypes = float | httpx.Timeout | None


def normalize_base_url(base_url: str) -> str:
    """The server root: accepts "http://h:8000", "http://h:8000/" and OpenAI-style "http://h:8000/v1"."""
    url = base_url.rstrip("/")
    url = url.removesuffix("/v1")
    return url


def to_timeout(timeout: TimeoutTypes) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After (seconds or an HTTP date) or retry-after-ms, in seconds; None when absent or unparsable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def should_retry(response: httpx.Response) -> bool:
    """408/409/429/5xx are retried; the server can override with `x-should-retry: true|false`."""
    override: str | None = response.headers.get("x-should-retry")
    if override in ("true", "false"):
        return override == "true"
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


def retry_delay(retries_done: int, response: httpx.Response | None) -> float:
    """Seconds to wait before retry number `retries_done + 1`: the server's Retry-After when it gave a sane
    one, else exponential backoff (0.5, 1, 2, ... capped at 8 s) with up to 25% jitter."""
    if response is not None:
        after = retry_after_seconds(response.headers)
        if after is not None and 0 <= after <= MAX_RETRY_AFTER:
            return after
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_done, MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * random.random())


def read_body(response: httpx.Response) -> Any:
    """The (already read) body as JSON when it is JSON, else as text."""
    try:
        return response.json()
    except ValueError:
        return response.text


def parse_response(response: httpx.Response, cast: type[T] | None) -> Any:
    """Raise the typed error for a >= 400 status; else the body validated as `cast` (raw JSON when None)."""
    body = read_body(response)
    if response.status_code >= 400:
        raise make_status_error(response, body)
    if cast is None:
        return body
    try:
        return cast.model_validate(body if body != "" else {})
    except pydantic.ValidationError as exc:
        raise APIResponseValidationError(
            f"Unexpected response body for {cast.__name__}: {exc}", response=response, body=body
        ) from exc


class ClientConfig:
    """Settings shared by both clients; `with_options` copies it with overrides."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: TimeoutTypes | NotGiven,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        model: str | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = normalize_base_url(base_url or os.environ.get("LIGHTHOUSE_BASE_URL") or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else os.environ.get("LIGHTHOUSE_API_KEY")
        self.timeout = DEFAULT_TIMEOUT if isinstance(timeout, NotGiven) else to_timeout(timeout)
        self.max_retries = max_retries
        self.default_headers = dict(default_headers or {})
        self.model = model

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"User-Agent": f"lighthouse-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.default_headers)
        headers.update(extra or {})
        return headers

    def request_timeout(self, timeout: TimeoutTypes | NotGiven) -> httpx.Timeout:
        return self.timeout if isinstance(timeout, NotGiven) else to_timeout(timeout)
