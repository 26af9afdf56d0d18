"""Incremental detokenization and stop strings, with the hold-back that streaming needs.

`IncrementalText.add(token_id)` returns the text that can be shown now: a token that ends inside a UTF-8
character is held until the character completes, and the end of the text that could still grow into a stop
string is held back until it either does (and is cut) or cannot any more. With no tokenizer (an engine
built on token ids alone, as `greedy_generate` does) there is no text: every call returns "".
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class IncrementalText:
    def __init__(self, tokenizer: Decoder | None, stops: list[str], *, include_stop: bool = False):
        self._tok = tokenizer
        self._stops = list(stops)
        self._include_stop = include_stop
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids[prefix_offset:read_offset] were decoded last time (context for merges)
        self._read_offset = 0
        self.text = ""  # all text decoded so far (cut at a stop string once one matched)
        self.sent = 0  # characters of `text` handed out
        self.stopped_by: str | None = None

    def _decode_new(self) -> str:
        prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
        full = self._tok.decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix) :]
        return ""

    def add(self, token_id: int) -> str:
        """Append a token; return the newly showable text. Sets `stopped_by` when a stop string appears."""
        self._ids.append(token_id)
        if self._tok is None:
            return ""
        new = self._decode_new()
        if new:
            start = max(0, len(self.text) - max((len(s) for s in self._stops), default=0) + 1)
            self.text += new
            cut = len(self.text)
            for s in self._stops:
                i = self.text.find(s, start)
                if i >= 0 and (self.stopped_by is None or i < cut):
                    cut, self.stopped_by = i, s
            if self.stopped_by is not None:
                self.text = self.text[: cut + (len(self.stopped_by) if self._include_stop else 0)]
                return self.flush()
        safe = len(self.text) - _held_back(self.text, self._stops)
        out = self.text[self.sent : max(self.sent, safe)]
        self.sent = max(self.sent, safe)
        return out

    def flush(self) -> str:
        """At the end of generation: everything not yet handed out (an unfinished character included)."""
        if self._tok is not None and self.stopped_by is None and self._read_offset < len(self._ids):
            prefix = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
            full = self._tok.decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset = len(self._ids)
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out
