"""FastAPI dependencies: the engine, settings, metrics and prompt encoder from app.state, and API-key auth."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request

from lighthouse_server.documents import owner_of
from lighthouse_server.errors import APIError
from lighthouse_server.metrics import Metrics
from lighthouse_server.prompts import PromptEncoder
from lighthouse_server.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_engine(request: Request) -> Any:
    """The AsyncEngine (or anything with its interface: tests override this dependency with a fake)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise APIError(503, "the engine is not loaded yet", code="engine_unavailable", headers={"Retry-After": "1"})
    return engine


def get_prompts(request: Request, engine: Annotated[Any, Depends(get_engine)]) -> PromptEncoder:
    """The app's PromptEncoder for the engine's tokenizer (made on first use; a test's fake engine gets its own)."""
    enc = getattr(request.app.state, "prompts", None)
    if enc is None or enc.tokenizer is not engine.tokenizer or enc.max_model_len != engine.max_model_len:
        enc = request.app.state.prompts = PromptEncoder(engine.tokenizer, engine.max_model_len)
    return enc


def require_api_key(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> None:
    """With API keys configured (api_key, api_keys): 'Authorization: Bearer KEY' (or 'X-API-Key: KEY'), compared in
    constant time. `request.state.owner` names the key (documents belong to it)."""
    keys = ([settings.api_key.get_secret_value()] if settings.api_key is not None else []) + list(settings.api_keys)
    request.state.owner = ""
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    matched = [hmac.compare_digest(given.encode(), k.encode()) for k in keys]  # every key compared: no early exit
    if any(matched):
        request.state.owner = owner_of(given)
    else:
        raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Any, Depends(get_engine)]
PromptsDep = Annotated[PromptEncoder, Depends(get_prompts)]
