"""The engine's settings, each declared once here: its type, default, bounds and help.

`EngineConfig` is what the engine receives. `EngineSettings` is the same settings in the form users give them
(a byte count in GiB, under a `_gb` name), generated from `EngineConfig`; the server's settings (and with them the
LIGHTHOUSE_* environment variables), `lighthouse serve`'s flags and `lighthouse generate`'s are generated from it in
turn (lighthouse/flags.py). A new engine setting is one field below; every command and variable follows.
`LoadSettings` is where the model comes from and where it runs, shared by both commands the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from lighthouse.engine.options import (DECODE_MODES, KV_MODES, MAX_SPECULATIVE_TOKENS, PREFILL_MODES, DecodeMode, KVMode,
                                      PrefillMode)

__all__ = ["EngineConfig", "EngineSettings", "LoadSettings", "InGiB", "DEFAULT_DENSE_TAIL_TOKENS", "KVCacheDtype",
           "PREFILL_MODES", "DECODE_MODES", "KV_MODES", "user_name"]

# The last 64 prompt tokens (the question, in document QA) are prefilled densely against the full cache. Measured
# on the bundled checkpoint (passkeys at 8K and 16K, bench/results/2026-11-28_cpu_default_checkpoint_serving/):
# no dense tail retrieves 9 of 10, a tail of 16, 64 or 256 tokens 10 of 10; 64 holds a one-line question whole.
DEFAULT_DENSE_TAIL_TOKENS = 64

KVCacheDtype = Literal["auto", "fp8_e4m3"]  # the names the KV cache's dtype table takes
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class InGiB:
    """Marks a byte count that users give in GiB: the field `NAME_bytes` is the setting `NAME_gb`."""


@dataclass(config=ConfigDict(allow_inf_nan=False))  # every float finite: int(inf GiB) raised OverflowError
class EngineConfig:
    prefill: Annotated[PrefillMode, Field(description="default prefill path; a request may ask for the other")] = (
        "sparse")
    decode: Annotated[DecodeMode, Field(description="default decode path; a request may ask for the other")] = "dense"
    kv_mode: Annotated[KVMode, Field(description=(
        "default KV layout: full, or compact (the Lighthouse layers keep only the selected context, ~14 GB for a 512K "
        "document instead of ~70; its requests decode sparsely, whatever decode says)"))] = "full"
    dense_tail_tokens: Annotated[int, Field(ge=0, description=(
        "prompt tokens prefilled densely against the full cache at the end of a sparse prefill"))] = (
        DEFAULT_DENSE_TAIL_TOKENS)
    max_model_len: Annotated[int | None, Field(ge=2, description=(
        "cap on prompt + completion tokens (default: the checkpoint's positions, at most what the KV budget "
        "holds)"))] = None
    max_num_seqs: Annotated[int, Field(ge=1, description="sequences decoded together in one batched step")] = 64
    kv_cache_bytes: Annotated[int | None, Field(gt=0, description=(
        "KV cache budget in GiB (default: kv-cache-fraction of the GPU memory free after loading, 2 GiB on the "
        "CPU)")), InGiB()] = None
    kv_cache_fraction: Annotated[float, Field(gt=0, le=1, description=(
        "share of the CUDA memory free after the model loads that the KV cache takes when no budget is given"))] = 0.75
    kv_cache_dtype: Annotated[KVCacheDtype, Field(description=(
        "K/V storage: auto (the model's dtype) or fp8_e4m3 (float8, half the bytes of bf16, scale 1)"))] = "auto"
    block_size: Annotated[int, Field(ge=16, le=1024, description=(
        "KV cache positions per block, a power of two in 16..1024"))] = 128
    enable_prefix_caching: Annotated[bool, Field(description=(
        "keep finished prompts' K/V for later prompts that start the same way"))] = True
    prefix_cache_min_tokens: Annotated[int, Field(ge=0, description="shorter prompts get no prefix-cache entry")] = 256
    host_cache_bytes: Annotated[int, Field(ge=0, description=(
        "host-memory tier of the prefix cache in GiB: a document evicted from the GPU waits in pinned host memory "
        "and returns over PCIe (0: off)")), InGiB()] = 0
    enforce_eager: Annotated[bool, Field(description=(
        "run the decode step eagerly, without CUDA graphs (always eager on the CPU)"))] = False
    cuda_graph_max_batch: Annotated[int | None, Field(ge=1, description=(
        "largest decode batch captured as a CUDA graph (default: max-num-seqs)"))] = None
    max_prefill_chunk_ms: Annotated[float | None, Field(ge=0, description=(
        "while other sequences decode, a long prefill runs in pieces of about this many ms, a decode step between "
        "them (0: a prefill runs whole, the others wait)"))] = 100.0
    express_prefill_tokens: Annotated[int, Field(ge=0, description=(
        "a prompt of at most this many tokens is prefilled whole between two pieces of a long prefill instead of "
        "after it (0: strictly one prefill at a time)"))] = 1024
    decode_step_budget_ms: Annotated[float, Field(ge=0, description=(
        "a decode step that would take longer decodes a round-robin slice of the running sequences in about this "
        "many ms, so that a new prompt waits at most about this long for the device (0: the whole batch always)"))] = 200.0
    prefill_chunk_tokens: Annotated[int, Field(ge=16, description=(
        "token chunk of a prefill's projections and MLP (bounds its activations)"))] = 32768
    speculative_num_tokens: Annotated[int, Field(ge=0, le=MAX_SPECULATIVE_TOKENS, description=(
        "default drafts per decode step by prompt lookup (n-grams of the prompt and the output so far), verified in "
        "one forward; greedy outputs unchanged, sampled ones in distribution (0: off; a request's \"speculative\" "
        "field overrides it)"))] = 0
    overlap_decode: Annotated[bool | None, Field(description=(
        "launch the next decode step before reading this one's tokens, so that detokenizing, stop checks and "
        "scheduling run while the GPU computes (rows with a grammar, penalties or drafts never overlap; default: on "
        "with CUDA, off on the CPU, where nothing runs asynchronously)"))] = None
    warmup: Annotated[bool | None, Field(description=(
        "at startup, one short request through every serving path, so that kernel compiles happen before the "
        "first user's request (default: on with CUDA, off on the CPU, which compiles nothing)"))] = None

    @field_validator("kv_cache_dtype", mode="before")
    @classmethod
    def _known_dtype(cls, value: Any) -> Any:
        if value not in get_args(KVCacheDtype):
            raise ValueError(f"kv_cache_dtype must be one of {list(get_args(KVCacheDtype))}, got {value!r}")
        return value

    def __post_init__(self) -> None:  # after pydantic has checked each field's type and bounds
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two in [16, 1024], got {self.block_size}")
        if not self.max_prefill_chunk_ms:
            self.max_prefill_chunk_ms = None  # 0 and None alike: a prefill runs whole


def _in_gib(info: FieldInfo) -> bool:
    return any(isinstance(m, InGiB) for m in info.metadata)


def user_name(name: str, info: FieldInfo) -> str:
    """The name users give a field by: `kv_cache_bytes` (in GiB) is `kv_cache_gb`, every other field its own."""
    return name.removesuffix("_bytes") + "_gb" if _in_gib(info) else name


def _user_field(name: str, info: FieldInfo) -> tuple[str, tuple[Any, FieldInfo]]:
    """(user name, (type, field)) of an EngineConfig field as a pydantic model declares it."""
    if not _in_gib(info):
        return name, (info.annotation, info)
    bounds = [m for m in info.metadata if not isinstance(m, InGiB)]
    nullable = type(None) in get_args(info.annotation)
    typ = Annotated[(float | None if nullable else float, *bounds)]
    default = None if info.default is None else info.default / GiB
    return user_name(name, info), (typ, Field(default, description=info.description))


class _EngineSettingsBase(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # the server's Settings inherit it: every float finite

    def engine_config(self) -> EngineConfig:
        """The EngineConfig these settings describe (raises ValueError on what only the engine checks)."""
        values = {}
        for name, info in EngineConfig.__pydantic_fields__.items():
            value = getattr(self, user_name(name, info))
            values[name] = int(value * GiB) if _in_gib(info) and value is not None else value
        return EngineConfig(**values)


# EngineConfig's fields as users give them; server Settings and both commands' flags derive from this model.
EngineSettings = create_model("EngineSettings", __base__=_EngineSettingsBase, __module__=__name__,
                              **dict(_user_field(n, i) for n, i in EngineConfig.__pydantic_fields__.items()))


class LoadSettings(BaseModel):
    """Where the model comes from and where it runs (`lighthouse serve` and `lighthouse generate`)."""

    checkpoint: str | None = Field(None, description="checkpoint directory (default: the bundled checkpoint)")
    device: str | None = Field(None, description="cpu | cuda | cuda:N (default: cuda if available)")
    dtype: str | None = Field(None, description="float32 | bfloat16 (default: bfloat16 on CUDA, float32 on the CPU)")
