"""GET /v1/models and /v1/models/{model}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from lighthouse_server.deps import EngineDep, require_api_key
from lighthouse_server.openapi import responses
from lighthouse_server.prompts import check_model
from lighthouse_server.schemas import ModelCard, ModelList

router = APIRouter(dependencies=[Depends(require_api_key)])


def _card(request: Request, engine) -> dict:
    return {"id": request.app.state.model_name, "object": "model", "created": request.app.state.started,
            "owned_by": "lighthouse", "max_model_len": engine.max_model_len}


@router.get("/v1/models", responses=responses(ModelList))
async def list_models(request: Request, engine: EngineDep):
    return {"object": "list", "data": [_card(request, engine)]}


@router.get("/v1/models/{model:path}", responses=responses(ModelCard, 404))
async def get_model(model: str, request: Request, engine: EngineDep):
    check_model(model, request.app.state.model_name)
    return _card(request, engine)
