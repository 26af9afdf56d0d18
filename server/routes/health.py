"""GET /health (liveness: the engine thread is alive) and /ready (admitting requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lighthouse_server.errors import error_response
from lighthouse_server.openapi import responses
from lighthouse_server.schemas import Health, Ready

router = APIRouter()


@router.get("/health", responses=responses(Health))
async def health(request: Request):
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive():
        return error_response(503, "the engine is not running", code="engine_unavailable")
    return {"status": "ok"}


@router.get("/ready", responses=responses(Ready))
async def ready(request: Request):
    """503 from the moment shutdown starts (before anything is refused: load balancers stop sending first)."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.is_alive() or not engine.accepting or not request.app.state.lifecycle.ready:
        return error_response(503, "not ready (loading or shutting down)", code="engine_unavailable",
                              headers={"Retry-After": str(request.app.state.settings.retry_after_s)})
    return {"status": "ready", **engine.stats()}
