"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} for every failure the server returns.

Error bodies are written with ASCII escapes (`json.dumps` default), so a message that quotes a client's bad input
(a lone surrogate, say) can always be encoded. Unexpected exceptions become a 500 in `middleware.CatchAll`,
inside the CORS middleware and without re-raising, so the browser sees the error and the connection stays usable.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lighthouse.engine.errors import (ENGINE_DEAD, INTERNAL_ERROR, KV_CACHE_EXCEEDED, OUT_OF_MEMORY, SHUTTING_DOWN,
                                     EngineStopped, InvalidRequest, QueueFull)

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
          409: "invalid_request_error", 431: "invalid_request_error", 429: "rate_limit_error",
          507: "insufficient_storage_error",
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


# a request that failed while running (RequestOutput.error_code) -> HTTP status; 503s carry Retry-After. A request
# that can never fit beside the pinned documents is a 400, as one that can never fit the cache at all (intake)
_FAILURE_STATUS = {OUT_OF_MEMORY: 503, SHUTTING_DOWN: 503, ENGINE_DEAD: 503, INTERNAL_ERROR: 500, KV_CACHE_EXCEEDED: 400}


def from_failure(message: str, code: str | None, *, retry_after_s: int = 1) -> APIError:
    """The error a client gets for a request the engine failed mid-way (an error event, in a stream)."""
    code = code or INTERNAL_ERROR
    status = _FAILURE_STATUS.get(code, 500)
    headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
    return APIError(status, message, code=code, headers=headers)


# pydantic's error types for a value of the wrong JSON type -> what was expected, in words
_EXPECTED = {"string_type": "a string", "int_type": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object", "none_required": "null"}
_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_CODES = {"unsupported": "unsupported_parameter", "invalid_combination": "invalid_combination"}


def _path(loc) -> list[str | int]:
    """A validation error's location as the client wrote it: field names and list indices, without pydantic's
    names for the members of a union ('function-after[...]', 'list[int]', 'TextPart') or dict-key markers."""
    return [x for x in loc if isinstance(x, int) or (x not in _TYPE_NAMES and _FIELD.fullmatch(x))]


def field_path(path: list[str | int]) -> str:
    """['messages', 0, 'role'] -> 'messages[0].role'."""
    out = ""
    for x in path:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else x)
    return out


def _shown(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def error_words(e: dict) -> str:
    """What is wrong with the value, in words: our validators' own messages, pydantic's others reworded."""
    kind, msg = e.get("type", ""), e.get("msg", "invalid")
    if kind == "value_error":
        return str(e.get("ctx", {}).get("error", msg))
    if kind == "string_unicode":  # pydantic's words for a str with a lone surrogate, in some fields
        return "the text has a lone UTF-16 surrogate"
    if kind == "missing":
        return "is required"
    if kind in ("too_long", "too_short", "string_too_long", "string_too_short"):
        ctx = e.get("ctx", {})
        n = ctx["max_length"] if kind.endswith("long") else ctx["min_length"]
        unit = ("character" if kind.startswith("string") else "item") + ("" if n == 1 else "s")
        got = f", got {ctx['actual_length']}" if ctx.get("actual_length") is not None else ""
        return f"must have {'at most' if kind.endswith('long') else 'at least'} {n} {unit}{got}"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {_shown(e.get('input'))}"
    if msg.startswith("Input should"):
        return f"should{msg[len('Input should'):]}, got {_shown(e.get('input'))}"
    return msg[0].lower() + msg[1:] if msg else "invalid"


def validation_message(exc: RequestValidationError | ValidationError) -> tuple[str, str | None, str | None]:
    """(message, param, code) for a body that failed validation (FastAPI's, or a route's own model_validate): the
    most specific error, and where a union refused a value of the wrong type in every member, the types it
    takes."""
    errors = [e for e in exc.errors() if isinstance(e, dict)]
    if not errors:
        return "invalid request", None, None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('msg', '')}", None, None
    paths = [_path(x for x in e.get("loc", ()) if x != "body") for e in errors]
    if not paths[0] and first.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object", None, None
    deepest = max(len(p) for p in paths)
    candidates = [(e, p) for e, p in zip(errors, paths) if len(p) == deepest]
    chosen = [(e, p) for e, p in candidates if e.get("type") not in _EXPECTED] or candidates
    e, path = chosen[0]
    where = field_path(path) if path else "body"
    wrong_types = [x for x, p in candidates if p == path and x.get("type") in _EXPECTED]
    if e.get("type") in _EXPECTED and len(wrong_types) > 1:  # a union: say every type it takes
        expected = list(dict.fromkeys(_EXPECTED[x["type"]] for x in wrong_types))
        words = f"must be {', '.join(expected[:-1])} or {expected[-1]}, got {_shown(e.get('input'))}"
    else:
        words = error_words(e)
    if words == "is required":
        message = f"'{where}' is required"
    else:
        message = f"invalid value for '{where}': {words}"
    return message, (field_path(path) if path else None), _CODES.get(e.get("type"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        message, param, code = validation_message(exc)
        return error_response(400, message, param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 405:  # Allow: every route's methods on this path (Starlette names the first's alone)
            return error_response(405, message, headers={"Allow": _allowed(app, _req.url.path)})
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        elif message == "There was an error parsing the body":  # FastAPI's words for a body that is not UTF-8
            message = "the request body is not valid JSON in UTF-8"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


def _allowed(app: FastAPI, path: str) -> str:
    methods: set[str] = set()
    for route in app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))
