"""Request options: the prefill and decode modes as types, parsed once at the edge (CLI, server schema, settings)
and passed down as one dataclass. Nothing below the edge re-validates a mode string."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

from lighthouse.engine.errors import InvalidRequest

PrefillMode = Literal["sparse", "dense"]
SpeculativeMethod = Literal["prompt_lookup"]
SPECULATIVE_METHODS: tuple[str, ...] = get_args(SpeculativeMethod)
MAX_SPECULATIVE_TOKENS = 16  # drafts verified per step at most
DecodeMode = Literal["dense", "sparse"]
KVMode = Literal["full", "compact"]
PREFILL_MODES: tuple[str, ...] = get_args(PrefillMode)
DECODE_MODES: tuple[str, ...] = get_args(DecodeMode)
KV_MODES: tuple[str, ...] = get_args(KVMode)


def parse_prefill(value: str, *, param: str = "prefill") -> PrefillMode:
    """A PrefillMode from a string (raises InvalidRequest, a ValueError, naming the choices)."""
    if value not in PREFILL_MODES:
        raise InvalidRequest(f"{param} must be one of {list(PREFILL_MODES)}, got {value!r}", param=param)
    return value  # type: ignore[return-value]


def parse_decode(value: str, *, param: str = "decode") -> DecodeMode:
    if value not in DECODE_MODES:
        raise InvalidRequest(f"{param} must be one of {list(DECODE_MODES)}, got {value!r}", param=param)
    return value  # type: ignore[return-value]


def parse_kv_mode(value: str, *, param: str = "kv_mode") -> KVMode:
    if value not in KV_MODES:
        raise InvalidRequest(f"{param} must be one of {list(KV_MODES)}, got {value!r}", param=param)
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding of one request: `num_tokens` drafts per step from `method` ("prompt_lookup": n-grams of
    the prompt and the output so far), verified in one forward; 0 drafts: off."""

    method: SpeculativeMethod = "prompt_lookup"
    num_tokens: int = 0

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise InvalidRequest(f"speculative.method must be one of {list(SPECULATIVE_METHODS)}, got {self.method!r}",
                                 param="speculative.method")
        k = self.num_tokens
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= MAX_SPECULATIVE_TOKENS:
            raise InvalidRequest(f"speculative.num_tokens must be an integer in [0, {MAX_SPECULATIVE_TOKENS}] (0: off), "
                                 f"got {k!r}", param="speculative.num_tokens")


@dataclass(frozen=True)
class RequestOptions:
    """How one request is served. None means: the engine's default (EngineConfig)."""

    prefill: PrefillMode | None = None
    decode: DecodeMode | None = None
    dense_tail_tokens: int | None = None
    cache_prompt: bool = True  # reuse the prefix cache and leave this prompt in it
    pin_prompt: bool = False  # and pin its entry there (a document's upload: engine/documents.py)
    # "compact": the Lighthouse layers keep only the prompt's selected context (+ later positions), no full cache;
    # implies sparse decode. "full": every layer keeps every position.
    kv_mode: KVMode | None = None
    speculative: Speculation | None = None  # None: the engine's default (EngineConfig.speculative_num_tokens)

    def __post_init__(self) -> None:
        if self.prefill is not None:
            parse_prefill(self.prefill)
        if self.decode is not None:
            parse_decode(self.decode)
        if self.kv_mode is not None:
            parse_kv_mode(self.kv_mode)
            if self.kv_mode == "compact" and self.decode == "dense":
                raise InvalidRequest("kv_mode 'compact' keeps no full cache in the Lighthouse layers, so it decodes "
                                     "sparsely: leave decode out or set it to 'sparse' (or use kv_mode 'full')",
                                     param="kv_mode")
        tail = self.dense_tail_tokens
        if tail is not None and (not isinstance(tail, int) or isinstance(tail, bool) or tail < 0):
            raise InvalidRequest(f"dense_tail_tokens must be an integer >= 0, got {tail!r}", param="dense_tail_tokens")

    def resolved(self, prefill: PrefillMode, decode: DecodeMode, dense_tail_tokens: int,
                 kv_mode: KVMode = "full") -> "RequestOptions":
        """These options with every None replaced by the given defaults. A request that asks for dense decode gets
        a full cache whatever the default kv_mode; a compact one decodes sparsely."""
        kv = self.kv_mode or ("full" if self.decode == "dense" else kv_mode)
        dec = "sparse" if kv == "compact" else (self.decode or decode)
        return replace(self, prefill=self.prefill or prefill, decode=dec, kv_mode=kv,
                       dense_tail_tokens=dense_tail_tokens if self.dense_tail_tokens is None else self.dense_tail_tokens)
