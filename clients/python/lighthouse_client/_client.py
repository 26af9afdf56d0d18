"""The synchronous Client."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ._base_client import (
    DEFAULT_MAX_RETRIES,
    NOT_GIVEN,
    ClientConfig,
    NotGiven,
    TimeoutTypes,
    parse_response,
    retry_delay,
    should_retry,
)
from ._helpers import connection_error, first_model_id, health_status, tokenize_body
from ._streaming import Stream
from .documents import Documents
from .resources import Chat, Completions, Models
from .types import DetokenizeResult, HealthStatus, TokenizeResult

Timeout = TimeoutTypes | NotGiven

__all__ = ["Client"]


class Client:
    """A client for a Lighthouse server.

    Args:
        base_url: the server root (a trailing `/v1` is accepted). Default: $LIGHTHOUSE_BASE_URL, else
            http://127.0.0.1:8000.
        api_key: sent as `Authorization: Bearer ...`. Default: $LIGHTHOUSE_API_KEY (none if unset).
        timeout: seconds (or an httpx.Timeout) per request; None for no timeout. Each method also takes
            `timeout=`. Default: 600 s read, 10 s connect.
        max_retries: retries on connection errors, timeouts and 408/409/429/5xx, with exponential backoff
            and jitter, honouring Retry-After. A stream is never retried once the server has answered 200.
        model: the model used when a call names none (else the server's first model).
        http_client: your own httpx.Client (proxies, transports); the Client then does not close it.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        model: str | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._config = ClientConfig(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
            default_headers=default_headers, model=model,
        )  # fmt: skip
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self._server_model: str | None = None
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.models = Models(self)
        self.documents = Documents(self.chat.completions)

    base_url = property(lambda self: self._config.base_url)
    api_key = property(lambda self: self._config.api_key)
    timeout = property(lambda self: self._config.timeout)
    max_retries = property(lambda self: self._config.max_retries)
    model = property(lambda self: self._config.model)

    def with_options(
        self,
        *,
        api_key: str | None = None,
        timeout: Timeout = NOT_GIVEN,
        max_retries: int | None = None,
        model: str | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> Client:
        """A copy with some settings changed, sharing this client's connection pool."""
        c = self._config
        return type(self)(
            base_url=c.base_url,
            api_key=api_key if api_key is not None else c.api_key,
            timeout=c.timeout if isinstance(timeout, NotGiven) else timeout,
            max_retries=c.max_retries if max_retries is None else max_retries,
            default_headers={**c.default_headers, **(default_headers or {})},
            model=model if model is not None else c.model,
            http_client=self._http,
        )

    # -- endpoints outside /v1 -------------------------------------------------------------------------

    def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        add_special_tokens: bool | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> TokenizeResult:
        """POST /tokenize: token ids of a prompt (or of chat messages through the chat template)."""
        result: TokenizeResult = self._request(
            "POST", "/tokenize", body=tokenize_body(prompt, messages, model, add_special_tokens), cast=TokenizeResult,
            timeout=timeout,
        )  # fmt: skip
        return result

    def detokenize(self, tokens: Sequence[int], *, model: str | None = None,
                   timeout: Timeout = NOT_GIVEN) -> DetokenizeResult:  # fmt: skip
        """POST /detokenize: the text of token ids (in `.prompt`)."""
        body = {"tokens": list(tokens), **({"model": model} if model else {})}
        result: DetokenizeResult = self._request("POST", "/detokenize", body=body, cast=DetokenizeResult,
                                                     timeout=timeout)  # fmt: skip
        return result

    def health(self, *, timeout: Timeout = NOT_GIVEN) -> HealthStatus:
        """GET /health (liveness), never retried; a non-2xx status is reported in `.ok`, not raised."""
        return self._probe("/health", timeout)

    def ready(self, *, timeout: Timeout = NOT_GIVEN) -> HealthStatus:
        """GET /ready: whether the server admits requests (model loaded, not draining)."""
        return self._probe("/ready", timeout)

    def _probe(self, path: str, timeout: Timeout) -> HealthStatus:
        response = self._send("GET", path, None, timeout, None, stream=False, max_retries=0, retry_status=False)
        return health_status(response)

    # -- lifecycle --------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the request loop -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        cast: type[Any] | None = None,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = NOT_GIVEN,
        fill_model: bool = False,
    ) -> Any:
        if fill_model and body is not None and not body.get("model"):
            body = {**body, "model": self._default_model()}
        response = self._send(method, path, body, timeout, headers, stream=stream)
        if stream and response.status_code < 400:
            return Stream(response, cast.model_validate if cast else (lambda x: x))
        if stream:
            response.read()
            response.close()
        return parse_response(response, cast)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        timeout: Timeout,
        headers: Mapping[str, str] | None,
        *,
        stream: bool,
        max_retries: int | None = None,
        retry_status: bool = True,
    ) -> httpx.Response:
        """Send with retries; returns the final response (possibly an error status, for the caller to raise)."""
        retries_left = self._config.max_retries if max_retries is None else max_retries
        done = 0
        while True:
            request = self._http.build_request(
                method, self._config.base_url + path, json=body,
                headers=self._config.headers(headers), timeout=self._config.request_timeout(timeout),
            )  # fmt: skip
            response: httpx.Response | None = None  # the refused response (its Retry-After); None: no connection
            try:
                sent = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if retries_left <= 0:
                    raise connection_error(exc, request) from exc
            else:
                if not (retry_status and retries_left > 0 and should_retry(sent)):
                    return sent
                response = sent
                sent.close()
            time.sleep(retry_delay(done, response))
            retries_left -= 1
            done += 1

    def _default_model(self) -> str:
        if self._config.model:
            return self._config.model
        if self._server_model is None:
            self._server_model = first_model_id(self.models.list())
        return self._server_model
