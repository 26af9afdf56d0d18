"""POST /tokenize and /detokenize (vLLM's shapes)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from server.deps import EngineDep, require_api_key
from server.errors import APIError
from server.prompts import _encode, chat_prompt_ids, check_model
from server.schemas import DetokenizeRequest, TokenizeRequest

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, engine: EngineDep):
    check_model(body.model, request.app.state.model_name)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
    if body.messages is not None:
        ids = await chat_prompt_ids(engine.tokenizer, body.messages)
    else:
        ids = await asyncio.to_thread(_encode, engine.tokenizer, body.prompt, body.add_special_tokens)
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request, engine: EngineDep):
    check_model(body.model, request.app.state.model_name)
    vocab = getattr(engine.tokenizer, "vocab_size", None)
    if any(t < 0 or (vocab is not None and t >= max(vocab, len(engine.tokenizer))) for t in body.tokens):
        raise APIError(400, "tokens contains an id outside the vocabulary", param="tokens")
    return {"prompt": await asyncio.to_thread(engine.tokenizer.decode, body.tokens)}
