"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lighthouse_server.deps import EngineDep, MetricsDep, PromptsDep, SettingsDep, require_api_key
from lighthouse_server.errors import APIError
from lighthouse_server.generation import ClientGone, Generation
from lighthouse_server.openai_format import Formatter
from lighthouse_server.openapi import generation_responses
from lighthouse_server.prompts import check_model, check_unsupported, new_id
from lighthouse_server.routes.documents import cache_salt, citer, get_documents, get_owner, pins_note
from lighthouse_server.schemas import Completion, CompletionRequest

router = APIRouter(dependencies=[Depends(require_api_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/completions", responses=generation_responses(Completion))
async def create_completion(body: CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep,
                            metrics: MetricsDep, prompts: PromptsDep):
    check_model(body.model, request.app.state.model_name)
    check_unsupported(body)
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (it must equal n)", param="best_of", code="invalid_combination")
    options, doc = body.request_options(cache_salt(request, body)), None
    if body.document_id is not None:
        documents = get_documents(request)
        doc = await documents.get(body.document_id, get_owner(request), param="document_id")
        await documents.resident(doc)
        text = _one_text(body.prompt)
        ids = None if text is not None else await prompts.completion(body.prompt)
        prompt_ids = await documents.completion_prompt(doc, ids, text)
        options = documents.options(doc, options, len(prompt_ids) - doc.tokens)
    else:
        prompt_ids = await prompts.completion(body.prompt)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default, also for an explicit null
    params = body.sampling(max_tokens, body.logprobs)
    fmt = Formatter(chat=False, model=request.app.state.model_name, tokenizer=engine.tokenizer,
                    request_id=new_id("cmpl"), include_usage=bool(body.stream_options and body.stream_options.include_usage),
                    logprobs=body.logprobs is not None)
    gen = Generation(engine, settings, metrics, fmt, prompt_ids, params, options,
                     return_progress=body.return_progress, pins_note=pins_note(request),
                     cite=await citer(request, body, doc, prompt_ids))
    await gen.submit()
    if body.stream:
        return StreamingResponse(gen.sse(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        return await gen.collect(request)
    except ClientGone:
        raise APIError(400, "client disconnected") from None


def _one_text(prompt) -> str | None:
    """The prompt's text when it is one string (or a list of one), else None (token ids)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None
