"""Errors the engine raises when it refuses a request (the server maps them to HTTP statuses)."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: `param` names the offending request field, `code` is a machine-readable reason."""

    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(EngineError, ValueError):
    """The request can never be served as given (bad value, too long): HTTP 400."""


class QueueFull(EngineError):
    """Too many requests waiting; try again later: HTTP 429/503 with Retry-After."""

    code = "queue_full"


class EngineStopped(EngineError):
    """The engine is shutting down or dead and admits nothing new: HTTP 503."""

    code = "engine_unavailable"


class RequestFailed(EngineError):
    """A request failed while running (e.g. out of device memory); the engine itself keeps serving."""

    code = "request_failed"


# RequestOutput.error_code of a request that failed while running (the server maps each to a status)
OUT_OF_MEMORY = "out_of_memory"  # device memory ran out in this request's step: transient, retry (503)
INTERNAL_ERROR = "internal_error"  # an exception in this request's prefill or decode step: a bug (500)
SHUTTING_DOWN = "shutting_down"  # the server stopped before the request finished (503)
ENGINE_DEAD = "engine_dead"  # the engine thread died; the process is exiting (503)
KV_CACHE_EXCEEDED = "kv_cache_exceeded"  # can never fit beside the pinned documents (400, as intake's refusal)

# citations of a compact document restored from a store written before its context's windows were kept (400)
CITATIONS_NEED_SPANS = ("citations need the windows of this compact document's selected entries, which its stored "
                        "copy (written by an earlier version) lacks: upload the document again")


def is_device_fatal(exc: BaseException) -> bool:
    """Whether an exception leaves the device unusable (a CUDA error other than out-of-memory poisons the
    context: every later kernel fails too), so the engine must stop rather than fail one request."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return False
    fatal_types = tuple(t for t in (getattr(torch, "AcceleratorError", None),) if t is not None)
    return isinstance(exc, fatal_types) or (isinstance(exc, RuntimeError) and "CUDA error" in str(exc))
