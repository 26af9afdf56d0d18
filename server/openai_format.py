"""OpenAI response shapes for completions and chat completions: whole responses and SSE chunks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from lighthouse.engine.request import TokenLogprob


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens:  # OpenAI's field for prompt tokens served from the prefix cache
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def prefill_info(info) -> dict:
    """The engine's PrefillInfo as the response's `prefill` extension object (how the prompt was prefilled)."""
    out = {"path": info.path, "sparse_tokens": info.sparse_tokens, "dense_tokens": info.dense_tokens,
           "cached_tokens": info.cached_tokens, "decode": info.decode, "seconds": round(info.seconds, 4)}
    if info.note:
        out["note"] = info.note
    return out


def prompt_progress(p) -> dict:
    """The engine's PromptProgress as llama.cpp's `prompt_progress` object."""
    return {"total": p.total, "cache": p.cache, "processed": p.processed, "time_ms": p.time_ms}


@dataclass
class ChoiceState:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    citations: list[dict] | None = None  # with citations: true, the document spans the answer drew on


class Formatter:
    """Builds one request's responses; `chat` picks the chat.completion shapes."""

    def __init__(self, *, chat: bool, model: str, tokenizer, request_id: str, include_usage: bool, logprobs: bool):
        self.chat, self.model, self.tok, self.id = chat, model, tokenizer, request_id
        self.include_usage, self.want_logprobs = include_usage, logprobs
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self._text_offset: dict[int, int] = {}

    def _token_str(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def _logprobs(self, index: int, entries: list[TokenLogprob]) -> dict | None:
        if not self.want_logprobs:
            return None
        if self.chat:
            def item(tid: int, lp: float) -> dict:
                s = self._token_str(tid)
                return {"token": s, "logprob": _finite(lp), "bytes": list(s.encode("utf-8"))}

            return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                                for e in entries], "refusal": None}
        tokens = [self._token_str(e.token_id) for e in entries]
        offsets = []
        for t in tokens:
            offsets.append(self._text_offset.get(index, 0))
            self._text_offset[index] = offsets[-1] + len(t)
        return {"tokens": tokens, "token_logprobs": [_finite(e.logprob) for e in entries],
                "top_logprobs": [{self._token_str(t): _finite(lp) for t, lp in e.top} for e in entries],
                "text_offset": offsets}

    def _envelope(self, obj: str, choices: list) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        return out

    # ---- streaming ----
    def role_chunk(self, index: int) -> dict:
        return self._chunk_of({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None})

    def chunk(self, index: int, text: str, entries: list[TokenLogprob] | None, finish_reason: str | None) -> dict:
        lp = self._logprobs(index, entries or []) if entries or finish_reason is None else None
        if self.chat:
            delta = {"content": text} if text or finish_reason is None else {}
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": finish_reason}
        return self._chunk_of(choice)

    def _chunk_of(self, choice: dict) -> dict:
        out = self._envelope(self.chunk_object, [choice])
        if self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, prefill=None) -> dict:
        out = self._envelope(self.chunk_object, [])
        out["usage"] = usage(prompt_tokens, completion_tokens, cached_tokens)
        if prefill is not None:
            out["prefill"] = prefill_info(prefill)
        return out

    def progress_chunk(self, p) -> dict:
        """A prefill progress chunk (no choices) in llama.cpp's `prompt_progress` shape (the engine's PromptProgress):
        `total` prompt tokens, `cache` of them from the prefix cache, `processed` so far (cached included),
        `time_ms` since the prefill began."""
        out = self._envelope(self.chunk_object, [])
        out["prompt_progress"] = prompt_progress(p)
        return out

    def citations_chunk(self, per_choice: list[list[dict]]) -> dict:
        """With citations: true, after the last token: each choice's cited spans (no choices)."""
        out = self._envelope(self.chunk_object, [])
        out["citations"] = [{"index": i, "spans": spans} for i, spans in enumerate(per_choice)]
        if self.include_usage:
            out["usage"] = None
        return out

    # ---- whole response ----
    def response(self, choices: list[ChoiceState], prompt_tokens: int, cached_tokens: int = 0, prefill=None) -> dict:
        out = []
        for i, c in enumerate(choices):
            lp = self._logprobs(i, c.logprobs)
            if self.chat:
                out.append({"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": lp,
                            "finish_reason": c.finish_reason})
            else:
                out.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
            if c.citations is not None:
                out[-1]["citations"] = c.citations
        body = self._envelope(self.object, out)
        body["usage"] = usage(prompt_tokens, sum(len(c.token_ids) for c in choices), cached_tokens)
        if prefill is not None:  # an extension beside usage: how the prompt was prefilled (and decoded)
            body["prefill"] = prefill_info(prefill)
        return body


def _finite(logprob: float) -> float:
    """A token a grammar forbids has logprob -inf, which JSON cannot carry: -9999.0 stands for it, as in vLLM."""
    return max(logprob, -9999.0)
