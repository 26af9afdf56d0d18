"""`create_app(settings)`: the FastAPI app. Its lifespan builds the engine once (not at import time; `lighthouse
serve` builds it before, so a bad checkpoint fails with a plain message), watches that the engine thread lives,
and on shutdown drains what is still in flight (`shutdown.py` has the order `lighthouse serve` follows)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from lighthouse_server.errors import install_error_handlers
from lighthouse_server.metrics import Metrics
from lighthouse_server.middleware import BodyLimitMiddleware, CatchAll, ShutdownGate
from lighthouse_server.openapi import install_openapi
from lighthouse_server.routes import chat, completions, documents, health, metrics, models, tokenize
from lighthouse_server.settings import Settings
from lighthouse_server.shutdown import Lifecycle, watch_engine

log = logging.getLogger(__name__)


def engine_config(settings: Settings):
    """The EngineConfig the settings describe (cheap; raises ValueError on a value only the engine checks)."""
    return settings.engine_config()


def build_engine(settings: Settings):
    """Check and load the checkpoint, start the engine thread (blocking). Raises CheckpointError naming the file
    when the checkpoint directory is incomplete or corrupt."""
    from lighthouse.checkpoint import verify_checkpoint
    from lighthouse.engine.async_engine import AsyncEngine
    from lighthouse.engine.llm import load_engine

    config = engine_config(settings)
    checkpoint = checkpoint_dir(settings)
    verify_checkpoint(checkpoint, require_tokenizer=True)
    t0 = time.monotonic()
    engine = AsyncEngine(load_engine(str(checkpoint), config, device=settings.device, dtype=settings.dtype),
                         max_waiting=settings.max_waiting)
    engine.start()
    log.info("serving %s (max_model_len=%d), loaded in %.1fs", _model_name(settings), engine.max_model_len,
             time.monotonic() - t0)
    return engine


def document_service(app: FastAPI, settings: Settings):
    """The documents' registry over the real engine (None over a test's fake one), with its disk store if asked:
    under the checkpoint's identity (disk_tier.checkpoint_identity hashes the weights: run off the event loop)."""
    from lighthouse.engine.cache.disk_tier import DiskStore, cache_layout, checkpoint_identity
    from lighthouse_server.deps import get_prompts
    from lighthouse_server.documents import DocumentService

    engine = app.state.engine
    llm = getattr(engine, "engine", None)
    if llm is None or not hasattr(llm, "kv"):
        return None
    store = None
    if settings.document_store:
        identity = checkpoint_identity(checkpoint_dir(settings), cache_layout(llm.kv.shape))
        store = DiskStore(settings.document_store, identity)
        log.info("document store: %s (%d documents)", store.root, len(store.index()))

    def prompts():
        return get_prompts(_StateRequest(app), engine)

    budget = int(settings.documents_kv_share * llm.kv.budget_bytes)
    return DocumentService(engine, prompts, budget_bytes=budget, store=store)


class _StateRequest:
    """What deps.get_prompts reads of a request: its app (the service calls it outside any request)."""

    def __init__(self, app: FastAPI):
        self.app = app


async def sweep_documents(app: FastAPI, every_s: float = 1.0) -> None:
    """Expired documents go (their memory with them) even when nobody asks for them."""
    while True:
        await asyncio.sleep(every_s)
        service = app.state.documents
        if service is not None:
            try:
                await service.sweep()
            except Exception:  # keep sweeping; the next access retries
                log.exception("document sweep failed")


def checkpoint_dir(settings: Settings) -> Path:
    """The folder to serve: a known model's prepared folder (converted on first use), an adapter folder merged over
    its prepared base (once), the checkpoint, or the bundled default."""
    from lighthouse.adapter import is_adapter_dir
    from lighthouse.catalog import prepare_adapter_folder, prepare_model
    from lighthouse.checkpoint import default_checkpoint_dir

    if settings.model:
        return prepare_model(settings.model, log=log.info)
    if settings.checkpoint and is_adapter_dir(settings.checkpoint):  # a LoRA adapter naming its base
        return prepare_adapter_folder(settings.checkpoint, log=log.info)
    return Path(settings.checkpoint) if settings.checkpoint else default_checkpoint_dir()


def _model_name(settings: Settings) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model:
        return settings.model
    if settings.checkpoint:
        return Path(settings.checkpoint).resolve().name
    return "lighthouse-default"


def create_app(settings: Settings | None = None, *, engine=None) -> FastAPI:
    """`engine`: an already started engine (tests pass one, or a fake); None loads settings.checkpoint."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.engine is None:
            app.state.engine = await asyncio.to_thread(build_engine, settings)
        app.state.documents = await asyncio.to_thread(document_service, app, settings)
        watcher = asyncio.create_task(watch_engine(app))
        sweeper = asyncio.create_task(sweep_documents(app))
        try:
            yield
        finally:
            watcher.cancel()
            sweeper.cancel()
            app.state.lifecycle.phase = "stopped"
            if app.state.documents is not None and app.state.lifecycle.fatal is None:
                await app.state.documents.flush()  # copies still to write to the document store (the engine makes them)
            await app.state.engine.shutdown(settings.drain_timeout_s)

    app = FastAPI(title="Lighthouse serve", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.engine = engine
    app.state.model_name = _model_name(settings)
    app.state.started = int(time.time())
    app.state.lifecycle = lifecycle = Lifecycle()
    install_error_handlers(app)
    for module in (health, metrics, models, completions, chat, tokenize, documents):
        app.include_router(module.router)
    install_openapi(app)
    # the last added runs first: CORS outermost, so that 413, 500 and 503 carry its headers too
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ShutdownGate, is_draining=lambda: lifecycle.draining, retry_after_s=settings.retry_after_s)
    app.add_middleware(CatchAll)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials="*" not in settings.cors_origins)
    return app
