"""Compiling a request's StructuredOutput for the engine's tokenizer with llguidance (one matcher per sequence).

Why llguidance (see docs/serving.md, "Structured output"): one small abi3 wheel with no dependencies (no torch, no
triton, so it never pulls another torch onto a CUDA host), MIT-licensed, maintained by the guidance-ai team and used
as a backend by vLLM, SGLang and llama.cpp; it reads any HF `tokenizers` JSON (the bundled byte-level tokenizer,
SmolLM2's, a GGUF-converted one), compiles JSON schemas lazily (no per-schema precompute over the vocabulary), and
its matcher can validate draft tokens and roll back consumed ones, which speculative decoding needs.

JSON is generated compactly by default (no free whitespace; ", " and ": " as separators, as Python's json.dumps):
with free whitespace a greedy model can emit spaces forever inside a valid JSON prefix. A schema may ask otherwise
with llguidance's own key, e.g. {"x-guidance": {"whitespace_flexible": true}}.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import StructuredOutput

INVALID_GRAMMAR = "invalid_grammar"  # the error code of a schema, regex or choice list that cannot be followed
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}  # response_format json_object: any JSON object (as OpenAI and vLLM)


def grammar_text(spec: StructuredOutput) -> str:
    """The llguidance grammar for `spec` (not yet checked: compiling it in a matcher does that)."""
    from llguidance import LLMatcher

    if spec.kind in ("json_object", "json_schema"):
        schema = ANY_OBJECT if spec.kind == "json_object" else spec.schema
        try:
            return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_DEFAULTS)
        except ValueError as exc:
            raise InvalidRequest(f"{spec.param} is not a valid JSON Schema: {exc}", param=spec.param,
                                 code=INVALID_GRAMMAR) from None
    if spec.kind == "regex":
        return LLMatcher.grammar_from_regex(spec.pattern)
    return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec.choices))


class Grammars:
    """The engine's llguidance tokenizer (built on first use: about a second for a 150K vocabulary) and the matchers
    made from it. Thread-safe: requests are built on the server's threads; matchers are then used on the engine's."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._lltok = None
        self._lock = threading.Lock()

    def lltokenizer(self, param: str):
        with self._lock:
            if self._lltok is None:
                self._lltok = self._build(param)
            return self._lltok

    def _build(self, param: str):
        try:
            import llguidance
        except ImportError:
            raise InvalidRequest("structured output needs the llguidance package on the server (pip install "
                                 "llguidance)", param=param, code="structured_output_unavailable") from None
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise InvalidRequest("structured output needs a fast (HF tokenizers) tokenizer; this server's has none",
                                 param=param, code="structured_output_unavailable")
        return llguidance.LLTokenizer(backend.to_str(), n_vocab=self.vocab_size, eos_token=self.eos_ids or None)

    def matchers(self, spec: StructuredOutput, n: int) -> list[Any]:
        """n fresh matchers for `spec` (one per choice of the request); raises InvalidRequest naming spec.param when
        the grammar does not compile (an unsupported schema keyword, a bad regex)."""
        from llguidance import LLMatcher

        lltok = self.lltokenizer(spec.param)
        matcher = LLMatcher(lltok, grammar_text(spec), log_level=0)
        if matcher.is_error():
            raise InvalidRequest(f"{spec.param} cannot be followed: {matcher.get_error().strip()}", param=spec.param,
                                 code=INVALID_GRAMMAR)
        return [matcher] + [matcher.deep_copy() for _ in range(n - 1)]
