"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} for every failure the server returns.

Error bodies are written with ASCII escapes (`json.dumps` default), so a message that quotes a client's bad input
(a lone surrogate, say) can always be encoded. Unexpected exceptions become a 500 in `middleware.CatchAll`,
inside the CORS middleware and without re-raising, so the browser sees the error and the connection stays usable.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lighthouse.engine.errors import (ENGINE_DEAD, INTERNAL_ERROR, OUT_OF_MEMORY, SHUTTING_DOWN, EngineStopped,
                                     InvalidRequest, QueueFull)

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable_error", 500: "internal_server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}


class ErrorJSONResponse(JSONResponse):
    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")  # \uXXXX escapes: always encodable


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return ErrorJSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def from_engine_error(exc: Exception, *, queue_full_status: int = 429, retry_after_s: int = 1,
                      prompt_param: str = "prompt") -> APIError:
    """Map the engine's refusals to HTTP (the engine names `prompt`; chat calls it `messages`)."""
    if isinstance(exc, InvalidRequest):
        param = prompt_param if exc.param == "prompt" else exc.param
        return APIError(400, exc.message, param=param, code=exc.code)
    if isinstance(exc, QueueFull):
        return APIError(queue_full_status, exc.message, code=exc.code, headers={"Retry-After": str(retry_after_s)})
    if isinstance(exc, EngineStopped):
        return APIError(503, exc.message, code=exc.code, headers={"Retry-After": str(retry_after_s)})
    raise exc


# a request that failed while running (RequestOutput.error_code) -> HTTP status; 503s carry Retry-After
_FAILURE_STATUS = {OUT_OF_MEMORY: 503, SHUTTING_DOWN: 503, ENGINE_DEAD: 503, INTERNAL_ERROR: 500}


def from_failure(message: str, code: str | None, *, retry_after_s: int = 1) -> APIError:
    """The error a client gets for a request the engine failed mid-way (an error event, in a stream)."""
    code = code or INTERNAL_ERROR
    status = _FAILURE_STATUS.get(code, 500)
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
    return APIError(status, message, code=code, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {e.get('msg', '')}", None
    if not loc and e.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object", None
    param = loc[0] if loc else None
    where = ".".join(loc) if loc else "body"
    if e.get("type") == "string_unicode":  # pydantic's words for a str with a lone surrogate, in some fields
        return f"invalid value for '{where}': the text has a lone UTF-16 surrogate", param
    return f"invalid value for '{where}': {e.get('msg', 'invalid')}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        elif message == "There was an error parsing the body":  # FastAPI's words for a body that is not UTF-8
            message = "the request body is not valid JSON in UTF-8"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))
