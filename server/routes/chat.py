"""POST /v1/chat/completions (the prompt comes from the tokenizer's chat template)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lighthouse_server.deps import EngineDep, MetricsDep, PromptsDep, SettingsDep, require_api_key
from lighthouse_server.errors import APIError
from lighthouse_server.generation import ClientGone, Generation
from lighthouse_server.openai_format import Formatter
from lighthouse_server.openapi import generation_responses
from lighthouse_server.prompts import check_max_tokens, check_model, check_unsupported, new_id
from lighthouse_server.routes.completions import SSE_HEADERS
from lighthouse_server.routes.documents import cache_salt, citer, get_documents, get_owner, pins_note
from lighthouse_server.schemas import ChatCompletion, ChatCompletionRequest

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/chat/completions", responses=generation_responses(ChatCompletion))
async def create_chat_completion(body: ChatCompletionRequest, request: Request, engine: EngineDep,
                                 settings: SettingsDep, metrics: MetricsDep, prompts: PromptsDep):
    check_model(body.model, request.app.state.model_name)
    check_unsupported(body)
    check_max_tokens(body, ("max_tokens", "max_completion_tokens"), engine.max_model_len)
    options, doc = body.request_options(cache_salt(request, body)), None
    if body.document_id is not None:
        documents = get_documents(request)
        doc = await documents.get(body.document_id, get_owner(request), param="document_id")
        await documents.resident(doc)
        prompt_ids, question_tokens = await documents.chat_prompt(doc, body.messages, body.add_generation_prompt)
        options = documents.options(doc, options, question_tokens)
    else:
        prompt_ids = await prompts.chat(body.messages, body.add_generation_prompt)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is None:  # as much as fits, capped so one request does not reserve the whole cache
        max_tokens = max(1, min(settings.default_max_tokens, engine.max_model_len - len(prompt_ids)))
    top = body.top_logprobs if body.top_logprobs is not None else 0
    params = body.sampling(max_tokens, top if body.logprobs else None)
    fmt = Formatter(chat=True, model=request.app.state.model_name, tokenizer=engine.tokenizer,
                    request_id=new_id("chatcmpl"),
                    include_usage=bool(body.stream_options and body.stream_options.include_usage),
                    logprobs=body.logprobs)
    gen = Generation(engine, settings, metrics, fmt, prompt_ids, params, options,
                     prompt_param="messages", return_progress=body.return_progress, pins_note=pins_note(request),
                     cite=await citer(request, body, doc, prompt_ids))
    await gen.submit()
    if body.stream:
        return StreamingResponse(gen.sse(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        return await gen.collect(request)
    except ClientGone:
        raise APIError(400, "client disconnected") from None
