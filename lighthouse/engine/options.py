"""Request options: the prefill and decode modes as types, parsed once at the edge (CLI, server schema, settings)
and passed down as one dataclass. Nothing below the edge re-validates a mode string. The speculation and the
structured output a request asks for are values here too (the engine's speculative/ and structured/ use them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from lighthouse.engine.errors import InvalidRequest

PrefillMode = Literal["sparse", "dense"]
SpeculativeMethod = Literal["prompt_lookup"]
SPECULATIVE_METHODS: tuple[str, ...] = get_args(SpeculativeMethod)
MAX_SPECULATIVE_TOKENS = 16  # drafts verified per step at most
MAX_CACHE_SALT_CHARS = 256
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


StructuredKind = Literal["json_object", "json_schema", "regex", "choice"]
STRUCTURED_KINDS: tuple[str, ...] = get_args(StructuredKind)
MAX_CHOICES = 1024
MAX_GRAMMAR_CHARS = 1 << 20  # a schema's JSON text or a regex, at most (1 MiB)


@dataclass(frozen=True)
class StructuredOutput:
    """json_object: any JSON object; json_schema: `schema` (a JSON Schema object); regex: the whole output matches
    `pattern`; choice: the output is exactly one of `choices`."""

    kind: StructuredKind
    schema: Any = None
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    param: str = "response_format"  # the request field it came from, named in errors

    def __post_init__(self) -> None:
        p, code = self.param, "invalid_grammar"
        if self.kind not in STRUCTURED_KINDS:
            raise InvalidRequest(f"structured output must be one of {list(STRUCTURED_KINDS)}, got {self.kind!r}",
                                 param=p, code=code)
        if self.kind == "json_schema":
            if not isinstance(self.schema, (dict, bool)):
                raise InvalidRequest(f"{p} must be a JSON Schema (an object), got {type(self.schema).__name__}",
                                     param=p, code=code)
            if len(json.dumps(self.schema)) > MAX_GRAMMAR_CHARS:
                raise InvalidRequest(f"{p} is longer than {MAX_GRAMMAR_CHARS} characters", param=p, code=code)
        if self.kind == "regex" and (not isinstance(self.pattern, str) or not self.pattern
                                     or len(self.pattern) > MAX_GRAMMAR_CHARS):
            raise InvalidRequest(f"{p} must be a non-empty regular expression of at most {MAX_GRAMMAR_CHARS} "
                                 "characters", param=p, code=code)
        if self.kind == "choice":
            c = self.choices
            if (not isinstance(c, tuple) or not 1 <= len(c) <= MAX_CHOICES
                    or any(not isinstance(x, str) or not x for x in c)):
                raise InvalidRequest(f"{p} must be a list of 1 to {MAX_CHOICES} non-empty strings", param=p, code=code)


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
    structured: StructuredOutput | None = None  # the output follows this grammar (structured/); None: free text
    # prefix-cache entries are shared only among requests of the same salt (vLLM's cache_salt): the server salts
    # with the API key's tenant, so one key's prompts never hit, wait for or replace another's
    cache_salt: str | None = None

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
        if self.cache_salt is not None and (not isinstance(self.cache_salt, str)
                                            or not 0 < len(self.cache_salt) <= MAX_CACHE_SALT_CHARS):
            raise InvalidRequest(f"cache_salt must be a non-empty string of at most {MAX_CACHE_SALT_CHARS} "
                                 "characters", param="cache_salt")
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
