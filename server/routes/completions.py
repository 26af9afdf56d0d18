"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from server.deps import EngineDep, MetricsDep, SettingsDep, require_api_key
from server.errors import APIError
from server.generation import ClientGone, Generation
from server.openai_format import Formatter
from server.prompts import check_model, check_unsupported, completion_prompt_ids, new_id
from server.schemas import CompletionRequest

router = APIRouter(dependencies=[Depends(require_api_key)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request, engine: EngineDep, settings: SettingsDep,
                            metrics: MetricsDep):
    check_model(body.model, request.app.state.model_name)
    check_unsupported(body)
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo")
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (it must equal n)", param="best_of")
    prompt_ids = await completion_prompt_ids(engine.tokenizer, body.prompt)
    params = body.sampling(body.max_tokens, body.logprobs)
    fmt = Formatter(chat=False, model=request.app.state.model_name, tokenizer=engine.tokenizer,
                    request_id=new_id("cmpl"), include_usage=bool(body.stream_options and body.stream_options.include_usage),
                    logprobs=body.logprobs is not None)
    gen = Generation(engine, settings, metrics, fmt, prompt_ids, params, body.request_options(),
                     return_progress=body.return_progress)
    gen.submit()
    if body.stream:
        return StreamingResponse(gen.sse(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        return await gen.collect(request)
    except ClientGone:
        raise APIError(400, "client disconnected") from None
