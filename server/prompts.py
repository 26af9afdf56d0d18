"""Prompt handling off the event loop: tokenization and chat templates (from the tokenizer's config)."""

from __future__ import annotations

import asyncio
import uuid

from server.errors import APIError
from server.schemas import ChatMessage, _Common


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def check_model(body_model: str | None, served: str) -> None:
    if body_model is not None and body_model != served:
        raise APIError(404, f"The model '{body_model}' does not exist; this server serves '{served}'.",
                       param="model", code="model_not_found")


def check_unsupported(body: _Common) -> None:
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")


def _encode(tokenizer, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _chat_text(tokenizer, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
    try:
        msgs = [{"role": m.role, "content": m.text()} for m in messages]
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions", param="messages")
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False)


async def completion_prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, list):
        if len(prompt) == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, "batched prompts are not supported; send one request per prompt", param="prompt")
            prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        return await asyncio.to_thread(_encode, tokenizer, prompt)
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    return list(prompt)


async def chat_prompt_ids(tokenizer, messages: list[ChatMessage], add_generation_prompt: bool = True) -> list[int]:
    if not messages:
        raise APIError(400, "messages must contain at least one message", param="messages")

    def work() -> list[int]:
        return _encode(tokenizer, _chat_text(tokenizer, messages, add_generation_prompt), add_special_tokens=False)

    return await asyncio.to_thread(work)
