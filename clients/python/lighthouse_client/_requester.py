"""What a resource needs of a client: its request loop. `Client._request` returns the result, `AsyncClient._request`
an awaitable of it, so one resource implementation serves both. Resources depend on this protocol, not on the
client modules that build them (which import the resources)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ._base_client import NotGiven, TimeoutTypes


class Requester(Protocol):
    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        cast: type[Any] | None = None,
        stream: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = ...,
        fill_model: bool = False,
    ) -> Any: ...
