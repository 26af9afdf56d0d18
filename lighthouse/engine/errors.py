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
