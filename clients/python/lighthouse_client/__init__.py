"""Python SDK for the Lighthouse long-document inference server.

    from lighthouse_client import Client
    client = Client(base_url="http://127.0.0.1:8000")        # api_key from $LIGHTHOUSE_API_KEY
    answer = client.documents.ask(open("report.txt").read(), "Who signed the contract?")
    print(answer.text)

Depends on httpx and pydantic only.
"""

from ._async_client import AsyncClient
from ._base_client import NOT_GIVEN, NotGiven
from ._client import Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InsufficientStorageError,
    InternalServerError,
    LighthouseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from ._streaming import AsyncStream, Stream
from ._version import __version__
from .documents import AsyncDocumentHandle, AsyncDocumentStream, DocumentHandle, DocumentStream, document_messages

__all__ = [
    "NOT_GIVEN",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncDocumentHandle",
    "AsyncDocumentStream",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "DocumentHandle",
    "DocumentStream",
    "InsufficientStorageError",
    "InternalServerError",
    "LighthouseError",
    "NotFoundError",
    "NotGiven",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "Stream",
    "UnprocessableEntityError",
    "__version__",
    "document_messages",
]
