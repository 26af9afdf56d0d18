"""GET /health (liveness: the engine thread is alive) and /ready (admitting requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.errors import error_response

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive():
        return error_response(503, "the engine is not running", code="engine_unavailable")
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive() or not engine.accepting:
        return error_response(503, "not ready (loading or shutting down)", code="engine_unavailable")
    return {"status": "ready", **engine.stats()}
