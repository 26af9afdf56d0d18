"""Shutdown in the order load balancers understand, and an exit status that says how it went.

On SIGTERM (or Ctrl-C):
1. /ready turns 503 at once; every other route is served as before for `shutdown_delay_s` (the pre-stop delay:
   time for a load balancer's readiness checks to take this replica out of rotation).
2. Draining: new requests get 503 + Retry-After + `Connection: close` (the listener stays open, so a client that
   still arrives is told, not refused or reset); requests in flight may finish for `drain_timeout_s`; any left
   then fail with a `shutting_down` error (a stream gets it as an error event before it closes).
3. The listener closes and the process exits 0. A second signal skips what is left of steps 1 and 2.

If the engine thread dies, /health is 503 at once, the requests in flight get an error, and the process exits
with status 1 (never 0, never hanging), so a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvicorn

from lighthouse_server.connections import uvicorn_options

log = logging.getLogger("lighthouse_server.shutdown")

STRAGGLER_TIMEOUT_S = 5.0  # after the drain: how long uvicorn waits for responses still being written


class Lifecycle:
    """app.state.lifecycle: where the server is between start and exit (read by /ready and the gate)."""

    def __init__(self) -> None:
        self.phase = "serving"  # serving -> stopping (/ready 503) -> draining (new requests 503) -> stopped
        self.fatal: str | None = None  # why the server must exit non-zero (the engine thread died)
        self.hurry = False  # a second signal: skip the rest of the delay and the drain

    @property
    def ready(self) -> bool:
        return self.phase == "serving" and self.fatal is None

    @property
    def draining(self) -> bool:
        return self.phase in ("draining", "stopped")


async def _sleep_unless_hurried(lc: Lifecycle, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not lc.hurry and loop.time() < end:
        await asyncio.sleep(min(0.05, max(0.0, end - loop.time())))


async def drain(app) -> None:
    """Steps 1 and 2 above."""
    settings, lc = app.state.settings, app.state.lifecycle
    lc.phase = "stopping"
    if settings.shutdown_delay_s:
        log.info("shutting down: /ready is 503; serving for %gs more so load balancers stop sending",
                 settings.shutdown_delay_s)
        await _sleep_unless_hurried(lc, settings.shutdown_delay_s)
    lc.phase = "draining"
    engine = app.state.engine
    if engine is not None:
        log.info("draining: new requests get 503; %d in flight may finish for up to %gs", engine.in_flight,
                 settings.drain_timeout_s)
        failed = await engine.drain(settings.drain_timeout_s, cut_short=lambda: lc.hurry)
        if failed:
            log.warning("drain timeout: %d requests still running were failed with a shutting_down error", failed)
    lc.phase = "stopped"


async def watch_engine(app, interval_s: float = 0.2) -> None:
    """Marks the server fatal when the engine thread has died (the lifespan runs this for the app's life)."""
    while True:
        await asyncio.sleep(interval_s)
        engine = app.state.engine
        reason = getattr(engine, "dead_reason", None)
        if reason is not None:
            app.state.lifecycle.fatal = reason
            log.critical("the engine thread died (%s): /health is 503, exiting with status 1", reason)
            return


class GracefulServer(uvicorn.Server):
    """uvicorn's server with the shutdown above; `exit_code` after `run()`: 0, or 1 when the engine died."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.app, self.exit_code = app, 0
        self._drain_requested = False
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:  # a signal handler: only set flags
        if self._drain_requested:
            self.app.state.lifecycle.hurry = True
            if sig == signal.SIGINT and self._drain_task is None:
                self.should_exit = True
            return
        self._drain_requested = True

    async def on_tick(self, counter: int) -> bool:
        lc = self.app.state.lifecycle
        if lc.fatal is not None:
            self.exit_code = 1
            return True
        if self._drain_requested and self._drain_task is None:
            self._drain_task = asyncio.create_task(drain(self.app))
        if self._drain_task is not None and self._drain_task.done():
            return True
        return await super().on_tick(counter)


def serve(app, settings, sock: socket.socket | None = None) -> int:
    """Run `app` under uvicorn until a signal (exit 0 after the drain) or the engine's death (exit 1). `sock`: the
    port's socket, bound before the model loaded (startup_checks.reserve_port); else uvicorn binds host:port."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=STRAGGLER_TIMEOUT_S, access_log=False,
                            **uvicorn_options(settings))  # header size and deadlines (connections.py)
    server = GracefulServer(config, app)
    server.run(sockets=[sock] if sock is not None else None)
    return server.exit_code
