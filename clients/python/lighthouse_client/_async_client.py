"""The asynchronous client: the same methods as Client, each awaitable; streams are `async for` iterators."""

from __future__ import annotations

import asyncio
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
from ._streaming import AsyncStream
from .documents import AsyncDocuments
from .resources import Chat, Completions, Models
from .types import DetokenizeResult, HealthStatus, TokenizeResult

Timeout = TimeoutTypes | NotGiven

__all__ = ["AsyncClient"]


class AsyncClient:
    """Like `Client` (same arguments and methods), for asyncio; pass an httpx.AsyncClient as `http_client`."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: Timeout = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        model: str | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._config = ClientConfig(
            base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
            default_headers=default_headers, model=model,
        )  # fmt: skip
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()
        self._server_model: str | None = None
        self.completions = Completions(self)
        self.chat = Chat(self)
        self.models = Models(self)
        self.documents = AsyncDocuments(self.chat.completions)

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
    ) -> AsyncClient:
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

    async def tokenize(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        add_special_tokens: bool | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> TokenizeResult:
        """POST /tokenize: token ids of a prompt (or of chat messages through the chat template)."""
        result: TokenizeResult = await self._request(
            "POST", "/tokenize", body=tokenize_body(prompt, messages, model, add_special_tokens), cast=TokenizeResult,
            timeout=timeout,
        )  # fmt: skip
        return result

    async def detokenize(self, tokens: Sequence[int], *, model: str | None = None,
                         timeout: Timeout = NOT_GIVEN) -> DetokenizeResult:  # fmt: skip
        """POST /detokenize: the text of token ids (in `.prompt`)."""
        body = {"tokens": list(tokens), **({"model": model} if model else {})}
        result: DetokenizeResult = await self._request("POST", "/detokenize", body=body, cast=DetokenizeResult,
                                                       timeout=timeout)  # fmt: skip
        return result

    async def health(self, *, timeout: Timeout = NOT_GIVEN) -> HealthStatus:
        """GET /health (liveness), never retried; a non-2xx status is reported in `.ok`, not raised."""
        return await self._probe("/health", timeout)

    async def ready(self, *, timeout: Timeout = NOT_GIVEN) -> HealthStatus:
        """GET /ready: whether the server admits requests (model loaded, not draining)."""
        return await self._probe("/ready", timeout)

    async def _probe(self, path: str, timeout: Timeout) -> HealthStatus:
        response = await self._send("GET", path, None, timeout, None, stream=False, max_retries=0, retry_status=False)
        return health_status(response)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _request(
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
            body = {**body, "model": await self._default_model()}
        response = await self._send(method, path, body, timeout, headers, stream=stream)
        if stream and response.status_code < 400:
            return AsyncStream(response, cast.model_validate if cast else (lambda x: x))
        if stream:
            await response.aread()
            await response.aclose()
        return parse_response(response, cast)

    async def _send(
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
                sent = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if retries_left <= 0:
                    raise connection_error(exc, request) from exc
            else:
                if not (retry_status and retries_left > 0 and should_retry(sent)):
                    return sent
                response = sent
                await sent.aclose()
            await asyncio.sleep(retry_delay(done, response))
            retries_left -= 1
            done += 1

    async def _default_model(self) -> str:
        if self._config.model:
            return self._config.model
        if self._server_model is None:
            self._server_model = first_model_id(await self.models.list())
        return self._server_model
