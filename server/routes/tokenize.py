"""POST /tokenize and /detokenize (vLLM's shapes)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from lighthouse_server.deps import EngineDep, PromptsDep, require_api_key
from lighthouse_server.errors import APIError
from lighthouse_server.openapi import responses
from lighthouse_server.prompts import check_model
from lighthouse_server.schemas import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/tokenize", responses=responses(TokenizeResponse, 400, 404, 413))
async def tokenize(body: TokenizeRequest, request: Request, engine: EngineDep, prompts: PromptsDep):
    """Token ids of a prompt, or of chat messages after the chat template (exactly one of the two). Text that
    cannot fit the context even as max_model_len tokens is refused (400) rather than tokenized."""
    check_model(body.model, request.app.state.model_name)
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
    if body.messages is not None:
        ids = await prompts.chat(body.messages, max_tokens=engine.max_model_len)
    else:
        ids = await prompts.encode(body.prompt, add_special_tokens=body.add_special_tokens,
                                   max_tokens=engine.max_model_len)
    return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}


@router.post("/detokenize", responses=responses(DetokenizeResponse, 400, 404, 413))
async def detokenize(body: DetokenizeRequest, request: Request, engine: EngineDep):
    check_model(body.model, request.app.state.model_name)
    vocab = getattr(engine.tokenizer, "vocab_size", None)
    if any(t < 0 or (vocab is not None and t >= max(vocab, len(engine.tokenizer))) for t in body.tokens):
        raise APIError(400, "tokens contains an id outside the vocabulary", param="tokens")
    return {"prompt": await asyncio.to_thread(engine.tokenizer.decode, body.tokens)}
