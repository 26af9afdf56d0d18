"""Server settings: one pydantic-settings object. Every field is also an environment variable
LIGHTHOUSE_<FIELD> (e.g. LIGHTHOUSE_API_KEY, LIGHTHOUSE_PREFILL); `lighthouse serve` flags override them.

Environment values are strings: numbers are parsed by pydantic's lax mode, but a Literal of ints compares the
string "503" with 503 and refuses it, so those fields convert first (`_int_literal`). List values take a
comma-separated string (or a JSON list). An empty variable counts as unset.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lighthouse.engine.config import DEFAULT_DENSE_TAIL_TOKENS
from lighthouse.engine.options import DecodeMode, KVMode, PrefillMode


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LIGHTHOUSE_", extra="ignore", env_ignore_empty=True)

    checkpoint: str | None = Field(None, description="checkpoint directory (default: the bundled one)")
    model: str | None = Field(None, description="a known model (lighthouse.catalog) instead of checkpoint: prepared "
                                                "once from its package, served under its name")
    served_model_name: str | None = Field(None, description="model id in /v1/models (default: the checkpoint's name)")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: SecretStr | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1/* and /tokenize")
    prefill: PrefillMode = "sparse"
    decode: DecodeMode = "dense"
    kv_mode: KVMode = Field("full", description="default KV layout: full, or compact (the Lighthouse layers keep only "
                                                "the selected context; implies sparse decode)")
    dense_tail_tokens: int = Field(DEFAULT_DENSE_TAIL_TOKENS, ge=0)
    max_model_len: int | None = Field(None, ge=2, description="cap on prompt + completion tokens")
    max_num_seqs: int = Field(64, ge=1, description="sequences decoded together")
    max_waiting: int = Field(256, ge=0, description="requests that may queue beyond the running batch's free slots "
                                                    "before new ones are refused (0: no queue)")
    queue_full_status: IntLiteralStatus = 429
    retry_after_s: int = Field(1, ge=0)
    enable_prefix_caching: bool = Field(True, description="reuse finished prompts' K/V for later prompts with the same prefix")
    kv_cache_gb: float | None = Field(None, gt=0, description="KV cache budget (default: 75% of free GPU memory / 2 GiB on CPU)")
    host_cache_gb: float = Field(0.0, ge=0, description="host-memory tier of the prefix cache: documents evicted from "
                                                      "the GPU wait in pinned host memory (0: off)")
    kv_cache_dtype: Literal["auto", "fp8_e4m3"] = Field("auto", description="K/V storage: the model's dtype, or "
                                                        "float8 e4m3 (half the bytes of bf16, scale 1)")
    block_size: int = Field(128, ge=16, le=1024, description="KV cache positions per block (a power of two)")
    enforce_eager: bool = Field(False, description="run the decode step eagerly: no CUDA graphs")
    max_prefill_chunk_ms: float = Field(100.0, ge=0, description="while other sequences decode, a long prefill runs "
                                        "in pieces of about this many ms with a decode step between (0: whole)")
    prefill_chunk_tokens: int = Field(32768, ge=16, description="token chunk of a prefill's projections and MLP")
    express_prefill_tokens: int = Field(4096, ge=0, description="a prompt of at most this many tokens is prefilled "
                                        "between two pieces of a long prefill instead of after it (0: off)")
    device: str | None = None
    dtype: str | None = None
    default_max_tokens: int = Field(1024, ge=1, description="chat max_tokens when the request gives none")
    max_body_mb: float = Field(64.0, gt=0, description="request body limit (a 512K-token prompt is 1-4 MB of JSON)")
    # connection deadlines (issue 29 item 5; the header size cap is connections.MAX_HEADER_BYTES)
    header_timeout_s: float = Field(10.0, gt=0, description="a request's line and headers must arrive within this "
                                    "many seconds of the connection opening or the previous response (else closed)")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's body must arrive within this many seconds "
                                  "of its headers (else 408)")
    cors_origins: CommaList = Field(default_factory=list, description="allowed CORS origins ('*' for any)")
    shutdown_delay_s: float = Field(0.0, ge=0, description="on SIGTERM, how long /ready reports 503 while requests "
                                                          "are still served (a pre-stop delay for load balancers)")
    drain_timeout_s: float = Field(30.0, ge=0, description="then, how long in-flight requests may finish")
    log_level: LogLevel = "info"

    @model_validator(mode="after")
    def _one_source(self) -> "Settings":
        if self.model and self.checkpoint:
            raise ValueError("give either model (a known model's name) or checkpoint (a folder), not both")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
