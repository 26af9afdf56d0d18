"""/openapi.json as this server behaves: every status it sends with the error model, none it never sends (no 422),
the limits of the loaded model, and the API key scheme when one is configured.

Routes declare their own success model and the errors they raise (`responses`, `generation_responses`); what
middleware and dependencies add to every route is added here, once the engine is loaded (the schema is built on
first request, after the lifespan): 401 with the bearer scheme on the key-protected routes, 413 and 408 on every
POST (body limit and deadline), 503 everywhere but /metrics (shutting down), 500 everywhere (a bug, in the error shape).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lighthouse_server.schemas import ErrorResponse

_DESCRIPTIONS = {
    400: "Invalid request: a bad value or combination, a prompt that does not fit the context (`param` names the field)",
    401: "Missing or wrong API key",
    404: "Unknown model, document (or route)",
    408: "The request body did not arrive in time",
    413: "Request body over the limit",
    429: "Queue full; retry after `Retry-After` seconds",
    500: "Internal error",
    503: "Shutting down, engine not running, or out of memory; retry after `Retry-After` seconds",
    507: "Pinned documents would pass their KV budget; the message names documents to delete",
}
_PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


def _error(status: int) -> dict:
    return {"model": ErrorResponse, "description": _DESCRIPTIONS[status]}


def responses(ok_model: Any, *errors: int) -> dict:
    """FastAPI `responses=`: the 200 model and the errors a route itself sends."""
    return {200: {"model": ok_model}, **{s: _error(s) for s in errors}}


def generation_responses(ok_model: Any) -> dict:
    """A completion route: JSON, or an SSE stream with stream=true; its own refusals."""
    out = responses(ok_model, 400, 404, 429)
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    out[200]["content"] = {"text/event-stream": {"schema": event,
                                                 "description": "with stream=true: `data: {chunk}` lines, then "
                                                                "`data: [DONE]`; a failure mid-stream is a "
                                                                "`data: {\"error\": ...}` event"}}
    return out


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _complete(schema, app)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _complete(schema: dict, app: FastAPI) -> None:
    settings, engine = app.state.settings, app.state.engine
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    if settings.api_key is not None or settings.api_keys:
        schema["components"].setdefault("securitySchemes", {})["bearerAuth"] = {"type": "http", "scheme": "bearer"}
    for path, item in schema["paths"].items():
        for method, op in item.items():
            resp = op.setdefault("responses", {})
            resp.pop("422", None)  # validation errors are 400s (errors.py)
            added = {"500": 500}
            if method == "post":
                added["413"] = 413
                added["408"] = 408
            if path != "/metrics":
                added["503"] = 503
            if (settings.api_key is not None or settings.api_keys) and path.startswith(_PROTECTED_PREFIXES):
                added["401"] = 401
                op["security"] = [{"bearerAuth": []}]
            for code, status in added.items():
                resp.setdefault(code, {"description": _DESCRIPTIONS[status], "content": error_ref})
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    if engine is not None:
        _model_limits(schema["components"]["schemas"], engine, settings)


def _model_limits(schemas: dict, engine, settings) -> None:
    """The loaded model's limits: max_tokens < max_model_len, n <= max_num_seqs, token ids < the vocabulary."""
    longest = engine.max_model_len - 1
    for name, fields in (("CompletionRequest", ("max_tokens",)),
                         ("ChatCompletionRequest", ("max_tokens", "max_completion_tokens"))):
        for field in fields:
            _set_on_integers(schemas[name]["properties"][field], "maximum", longest)
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        _set_on_integers(schemas[name]["properties"]["n"], "maximum", min(16, settings.max_num_seqs))
    vocab = getattr(getattr(engine, "engine", None), "vocab_size", None)
    if vocab is not None:
        _set_on_integers(schemas["CompletionRequest"]["properties"]["prompt"], "maximum", vocab - 1)
        for name in ("CompletionRequest", "ChatCompletionRequest"):
            _set_on_integers(schemas[name]["properties"]["stop_token_ids"], "maximum", vocab - 1)
    tok = engine.tokenizer
    tok_vocab = max(getattr(tok, "vocab_size", 0) or 0, len(tok)) if tok is not None else None
    if tok_vocab:
        _set_on_integers(schemas["DetokenizeRequest"]["properties"]["tokens"], "maximum", tok_vocab - 1)


def _set_on_integers(node: Any, key: str, value: int) -> None:
    """Set `key` on every integer schema inside `node` (walks anyOf / items)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node[key] = min(node.get(key, value), value) if key == "maximum" else value
        for child in node.values():
            _set_on_integers(child, key, value)
    elif isinstance(node, list):
        for child in node:
            _set_on_integers(child, key, value)
