"""Prompt handling off the event loop: tokenization and chat templates (`chat_template.py`).

Tokenizing is the one thing a request does before the engine sees it, so it is bounded: text that cannot fit
the context (more bytes than max_model_len tokens can cover, `token_bound.py`; for a chat, all messages' content
together, checked before the template runs) is refused before it is tokenized, and at most TOKENIZE_CONCURRENCY
prompts are tokenized at once (the others wait their turn). The schema bounds the number of messages.
"""

from __future__ import annotations

import asyncio
import uuid

from lighthouse_server.chat_template import ChatTemplate
from lighthouse_server.errors import APIError
from lighthouse_server.schemas import ChatMessage, _Common
from lighthouse_server.token_bound import max_bytes_per_token

TOKENIZE_CONCURRENCY = 2  # prompts tokenized at once: each holds a core and a few times its text in memory


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_model(body_model: str | None, served: str) -> None:
    if body_model is not None and body_model != served:
        raise APIError(404, f"The model '{body_model}' does not exist; this server serves '{served}'.",
                       param="model", code="model_not_found")


def check_unsupported(body: _Common) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options",
                       code="invalid_combination")


def check_max_tokens(body, fields: tuple[str, ...], max_model_len: int) -> None:
    """The schema's bound on max_tokens fields (max_model_len - 1), also for a field that another overrides."""
    for field in fields:
        value = getattr(body, field)
        if value is not None and value > max_model_len - 1:
            raise APIError(400, f"{field} must be at most {max_model_len - 1} (max_model_len {max_model_len} less one "
                           f"prompt token), got {value}", param=field)


class PromptEncoder:
    """Text -> token ids for one tokenizer and context length (one per app, `deps.get_prompts`)."""

    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer, self.max_model_len = tokenizer, max_model_len
        self.bytes_per_token = max_bytes_per_token(tokenizer)
        self.template = ChatTemplate(tokenizer)
        self._slots = asyncio.Semaphore(TOKENIZE_CONCURRENCY)

    def refuse_if_too_long(self, texts: str | list[str], param: str, max_tokens: int) -> None:
        """400 when `texts` (one text, or the parts of one prompt) certainly tokenize to more than `max_tokens`
        tokens (checked on their length alone)."""
        if self.bytes_per_token is None:
            return
        texts = [texts] if isinstance(texts, str) else texts
        cap = max_tokens * self.bytes_per_token
        chars = sum(map(len, texts))  # a character is at least one byte
        if chars > cap or sum(len(t.encode("utf-8")) for t in texts) > cap:
            size = sum(len(t.encode("utf-8")) for t in texts)
            raise APIError(
                400, f"This model's maximum context length is {self.max_model_len} tokens, but the {param} "
                f"{'are' if param == 'messages' else 'is'} {size:,} bytes: more than {max_tokens:,} tokens of this tokenizer (one token "
                f"covers at most {self.bytes_per_token} bytes). Please shorten the {param}.",
                param=param, code="context_length_exceeded")

    async def _run(self, fn, *args):
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    async def encode(self, text: str, *, add_special_tokens: bool = True, param: str = "prompt",
                     max_tokens: int | None = None) -> list[int]:
        """Token ids of `text`; `max_tokens` (default max_model_len - 1: one token must remain to generate)."""
        self.refuse_if_too_long(text, param, self.max_model_len - 1 if max_tokens is None else max_tokens)
        return await self._run(_encode, self.tokenizer, text, add_special_tokens)

    async def chat(self, messages: list[ChatMessage], add_generation_prompt: bool = True,
                   max_tokens: int | None = None) -> list[int]:
        """The prompt ids of a chat: the template's markup as special tokens, the messages' content as text."""
        if not messages:
            raise APIError(400, "messages must contain at least one message", param="messages")
        contents = [m.text() for m in messages]
        self.refuse_if_too_long(contents, "messages", self.max_model_len - 1 if max_tokens is None else max_tokens)
        roles = [m.role for m in messages]

        def template_and_encode() -> list[int]:
            return self.template.encode(self.template.render(roles, add_generation_prompt), contents)

        return await self._run(template_and_encode)

    async def completion(self, prompt) -> list[int]:
        """The ids of a /v1/completions prompt: a string, a list of ids, or a one-element list of either."""
        if isinstance(prompt, list):
            if len(prompt) == 0:
                raise APIError(400, "the prompt is empty", param="prompt")
            if isinstance(prompt[0], (str, list)):
                if len(prompt) != 1:
                    raise APIError(400, "batched prompts are not supported; send one request per prompt",
                                   param="prompt")
                prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "the prompt is empty", param="prompt")
            return await self.encode(prompt)
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        return list(prompt)


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))

