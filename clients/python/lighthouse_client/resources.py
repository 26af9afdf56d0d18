"""completions, chat.completions and models: one implementation for both clients.

Each method returns what the client's `_request` returns: the result itself on `Client`, an awaitable of
it on `AsyncClient`. Streams are `Stream` / `AsyncStream` respectively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._base_client import NOT_GIVEN, NotGiven, TimeoutTypes
from ._params import build_body, stream_options
from ._requester import Requester
from .types import ChatCompletion, ChatCompletionChunk, Completion, ModelList

Timeout = TimeoutTypes | NotGiven
Stop = str | list[str] | None


def _structured(response_format: Mapping[str, Any] | None, guided_json: Mapping[str, Any] | str | None,
                guided_regex: str | None, guided_choice: list[str] | None) -> dict[str, Any]:
    """The structured-output fields as the body carries them (None: left out)."""
    return dict(
        response_format=dict(response_format) if response_format is not None else None,
        guided_json=dict(guided_json) if isinstance(guided_json, Mapping) else guided_json,
        guided_regex=guided_regex, guided_choice=list(guided_choice) if guided_choice is not None else None,
    )  # fmt: skip


class _Resource:
    def __init__(self, client: Requester) -> None:
        self._client = client


class Completions(_Resource):
    def create(
        self,
        *,
        prompt: str | list[int] | list[str],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        n: int | None = None,
        stop: Stop = None,
        seed: int | None = None,
        logprobs: int | None = None,
        echo: bool | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        stream: bool = False,
        include_usage: bool | None = None,
        user: str | None = None,
        prefill: str | None = None,
        decode: str | None = None,
        dense_tail_tokens: int | None = None,
        kv_mode: str | None = None,
        speculative: Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        guided_json: Mapping[str, Any] | str | None = None,
        guided_regex: str | None = None,
        guided_choice: list[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> Any:
        """POST /v1/completions. Returns `Completion`, or with `stream=True` a stream of `Completion` chunks.

        `prefill` ("sparse"|"dense"), `decode` ("dense"|"sparse"), `dense_tail_tokens`, `kv_mode`
        ("full"|"compact": keep only the selected context in the Lighthouse layers) and `speculative`
        (`{"method": "prompt_lookup", "num_tokens": k}`: k drafts per step from the prompt, same greedy output)
        are this server's per-request extensions. `response_format` (OpenAI's: `{"type": "json_object"}` or
        `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`) and vLLM's `guided_json`,
        `guided_regex`, `guided_choice` make the output follow a grammar (one of them per request).
        `include_usage=True` asks for a last streamed chunk carrying `usage`.
        With no `model`, the client's `model`, else the server's first model, is used.
        """
        body = build_body(
            dict(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, min_p=min_p, n=n, stop=stop, seed=seed, logprobs=logprobs, echo=echo,
                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                repetition_penalty=repetition_penalty, stream=True if stream else None,
                stream_options=stream_options(stream, include_usage), user=user, prefill=prefill,
                decode=decode, dense_tail_tokens=dense_tail_tokens, kv_mode=kv_mode,
                speculative=dict(speculative) if speculative is not None else None,
                **_structured(response_format, guided_json, guided_regex, guided_choice),
            ),
            extra_body,
        )  # fmt: skip
        return self._client._request(
            "POST", "/v1/completions", body=body, cast=Completion, stream=stream,
            headers=extra_headers, timeout=timeout, fill_model=True,
        )  # fmt: skip


class ChatCompletions(_Resource):
    def create(
        self,
        *,
        messages: Iterable[Mapping[str, Any]],
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        n: int | None = None,
        stop: Stop = None,
        seed: int | None = None,
        logprobs: bool | None = None,
        top_logprobs: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        stream: bool = False,
        include_usage: bool | None = None,
        user: str | None = None,
        prefill: str | None = None,
        decode: str | None = None,
        dense_tail_tokens: int | None = None,
        kv_mode: str | None = None,
        speculative: Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        guided_json: Mapping[str, Any] | str | None = None,
        guided_regex: str | None = None,
        guided_choice: list[str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = NOT_GIVEN,
    ) -> Any:
        """POST /v1/chat/completions. Returns `ChatCompletion`, or with `stream=True` a stream of
        `ChatCompletionChunk`. Other parameters as in `completions.create`."""
        body = build_body(
            dict(
                model=model, messages=[dict(m) for m in messages], max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, n=n, stop=stop, seed=seed,
                logprobs=logprobs, top_logprobs=top_logprobs, presence_penalty=presence_penalty,
                frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty,
                stream=True if stream else None, stream_options=stream_options(stream, include_usage),
                user=user, prefill=prefill, decode=decode, dense_tail_tokens=dense_tail_tokens, kv_mode=kv_mode,
                speculative=dict(speculative) if speculative is not None else None,
                **_structured(response_format, guided_json, guided_regex, guided_choice),
            ),
            extra_body,
        )  # fmt: skip
        cast = ChatCompletionChunk if stream else ChatCompletion
        return self._client._request(
            "POST", "/v1/chat/completions", body=body, cast=cast, stream=stream,
            headers=extra_headers, timeout=timeout, fill_model=True,
        )  # fmt: skip


class Chat(_Resource):
    def __init__(self, client: Requester) -> None:
        super().__init__(client)
        self.completions = ChatCompletions(client)


class Models(_Resource):
    def list(self, *, timeout: Timeout = NOT_GIVEN) -> Any:
        """GET /v1/models -> `ModelList` (iterable; each `Model` has `id` and `max_model_len`)."""
        return self._client._request("GET", "/v1/models", cast=ModelList, timeout=timeout)
