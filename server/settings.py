"""Server settings: one pydantic-settings object. Every field is also an environment variable
LIGHTHOUSE_<FIELD> (e.g. LIGHTHOUSE_API_KEY, LIGHTHOUSE_PREFILL, LIGHTHOUSE_KV_CACHE_GB); `lighthouse serve` flags,
generated from the same fields (server/cli.py), override them.

Environment values are strings: numbers are parsed by pydantic's lax mode, but a Literal of ints compares the
string "503" with 503 and refuses it, so those fields convert first (`_int_literal`). List values take a
comma-separated string (or a JSON list). An empty variable counts as unset.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lighthouse.engine.config import EngineSettings, LoadSettings

ENV_PREFIX = "LIGHTHOUSE_"


def _int_literal(value: Any) -> Any:
    """'503' (from the environment) -> 503, so Literal[429, 503] accepts it; anything else passes through."""
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    return value


def _comma_list(value: Any) -> Any:
    """'https://a, https://b' or '["https://a"]' -> a list of non-empty, stripped strings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


IntLiteralStatus = Annotated[Literal[429, 503], BeforeValidator(_int_literal)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]
LogLevel = Annotated[Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)]


class Settings(BaseSettings, LoadSettings, EngineSettings):
    """The server's own settings below; the engine's (EngineSettings) and the model's source (LoadSettings) come
    from their one declaration in lighthouse/engine/config.py. `lighthouse serve` has one flag per field."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    model: str | None = Field(None, description="a known model instead of checkpoint (`lighthouse models list`), e.g. "
                                                "smollm2-135m-instruct: converted once from its package into "
                                                "~/.cache/lighthouse/models, then served under that name")
    served_model_name: str | None = Field(None, description="model id reported by /v1/models (default: the "
                                                            "checkpoint's folder name)")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=1, le=65535, description="port")
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1/* and /tokenize")
    max_waiting: int = Field(256, ge=0, description="requests that may queue beyond the running batch's free slots; "
                                                    "more get queue-full-status (0: no queue)")
    queue_full_status: IntLiteralStatus = Field(429, description="the status of a request refused for a full queue")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 429/503 responses")
    default_max_tokens: int = Field(1024, ge=1, description="a chat completion's max_tokens when the request gives "
                                                            "none, at most what the context leaves")
    max_body_mb: float = Field(64.0, gt=0, description="request body limit in MiB (a 512K-token prompt is 1-4 MB of "
                                                       "JSON)")
    # connection deadlines (issue 29 item 5; the header size cap is connections.MAX_HEADER_BYTES)
    header_timeout_s: float = Field(10.0, gt=0, description="a request's line and headers must arrive within this "
                                    "many seconds of the connection opening or the previous response (else closed)")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this many seconds "
                                  "of its headers (else 408)")
    cors_origins: CommaList = Field(default_factory=list, description="comma-separated allowed CORS origins ('*' for "
                                                                      "any)")
    shutdown_delay_s: float = Field(0.0, ge=0, description="on SIGTERM, seconds /ready reports 503 while requests are "
                                                           "still served, so load balancers stop sending")
    drain_timeout_s: float = Field(30.0, ge=0, description="on SIGTERM, then, seconds in-flight requests may take to "
                                                           "finish")
    log_level: LogLevel = Field("info", description="log level")
    # documents (POST /v1/documents; server/documents.py)
    api_keys: CommaList = Field(default_factory=list, description="more accepted API keys, comma-separated; each key "
                                                                  "sees only the documents it uploaded")
    documents_kv_share: float = Field(0.5, gt=0, le=1, description="share of the KV cache that pinned documents may "
                                      "hold together; an upload past it is refused (507)")
    document_store: str | None = Field(None, description="directory where documents' K/V are also written, keyed by "
                                       "the checkpoint's identity, and found again after a restart")

    @model_validator(mode="after")
    def _one_source(self) -> "Settings":
        if self.model and self.checkpoint:
            raise ValueError("give either model (a known model's name) or checkpoint (a folder), not both")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
