"""GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

router = APIRouter()


@router.get("/metrics", response_class=Response, responses={200: {
    "description": "Prometheus text exposition format",
    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request):
    engine = getattr(request.app.state, "engine", None)
    stats = engine.stats() if engine is not None else {}
    return Response(request.app.state.metrics.render(stats), media_type=CONTENT_TYPE_LATEST)
