"""Typed errors, one class per HTTP status family, like openai-python's.

Every error raised by a server response carries the server's OpenAI-shaped error body
(`{"error": {"message", "type", "param", "code"}}`) as attributes.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "LighthouseError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
]


class LighthouseError(Exception):
    """Base class of everything this SDK raises."""


class APIError(LighthouseError):
    """A request failed. `message`, `code`, `type` and `param` come from the server when it sent them."""

    message: str
    request: httpx.Request | None
    body: Any
    code: str | None
    type: str | None
    param: str | None

    def __init__(self, message: str, *, request: httpx.Request | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        self.code = _str_or_none(err.get("code"))
        self.type = _str_or_none(err.get("type"))
        self.param = _str_or_none(err.get("param"))


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    status_code: int
    response: httpx.Response

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message, request=response.request, body=body)
        self.response = response
        self.status_code = response.status_code

    def __str__(self) -> str:
        code = f" ({self.code})" if self.code else ""
        return f"Error code: {self.status_code}{code} - {self.message}"


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke before a response was complete."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """The request took longer than its timeout."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APIResponseValidationError(APIError):
    """The server answered 2xx with a body this SDK could not parse."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any = None) -> None:
        super().__init__(message, request=response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class BadRequestError(APIStatusError):  # 400
    pass


class AuthenticationError(APIStatusError):  # 401
    pass


class PermissionDeniedError(APIStatusError):  # 403
    pass


class NotFoundError(APIStatusError):  # 404
    pass


class ConflictError(APIStatusError):  # 409
    pass


class RequestTooLargeError(APIStatusError):  # 413
    pass


class UnprocessableEntityError(APIStatusError):  # 422
    pass


class RateLimitError(APIStatusError):  # 429
    pass


class InternalServerError(APIStatusError):  # >= 500
    pass


class ServiceUnavailableError(InternalServerError):  # 503: queue full, not ready, draining
    pass


class InsufficientStorageError(InternalServerError):  # 507: pinned documents would pass their budget (delete some)
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
    507: InsufficientStorageError,
}


# An error event inside a stream comes after a 200: the status it stands for is read from the error's `type`, which
# the server derives from it (server/errors.py; "invalid_request_error" is its 400s').
_STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "internal_server_error": 500,
    "service_unavailable_error": 503,
    "insufficient_storage_error": 507,
}


def _status_class(status: int) -> type[APIStatusError]:
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls


def make_status_error(response: httpx.Response, body: Any) -> APIStatusError:
    """The typed error for a >= 400 response whose body has already been read."""
    return _status_class(response.status_code)(error_message(response, body), response=response, body=body)


def make_event_error(response: httpx.Response, body: Any) -> APIError:
    """The error for an error event inside a stream: the class the same error has as an HTTP answer, its
    `status_code` that answer's status (the stream's own response, in `response`, was a 200), by the error's `type`;
    a plain APIError for a type this server does not send."""
    err = body.get("error") if isinstance(body, dict) else None
    status = _STATUS_BY_TYPE.get(str(err.get("type"))) if isinstance(err, dict) else None
    if status is None:
        return APIError(error_message(response, body), request=response.request, body=body)
    error = _status_class(status)(error_message(response, body), response=response, body=body)
    error.status_code = status
    return error


def error_message(response: httpx.Response, body: Any) -> str:
    """The server's message: OpenAI's `error.message`, FastAPI's `detail`, or the raw text."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        if body.get("detail"):
            return str(body["detail"])
        if body.get("message"):
            return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:2000]
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
