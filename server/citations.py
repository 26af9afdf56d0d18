"""Citations: the document spans an answer drew on most, from the engine's per-position attention scores
(lighthouse/engine/citations.py; docs/documents.md has the method and its measured accuracy).

A document's text is cut into spans at sentence ends (`.`, `!`, `?` before whitespace, and line breaks), a span
longer than `MAX_SPAN_CHARS` into windows of that many characters. Each document token's score goes to the span
holding the token's first character (offsets from the tokenizer's offset mapping, when the document's tokens are the
end of its uploaded prefix as they are with byte-level and most BPE tokenizers; else by proportion of the text). A
span's score is the sum of its tokens' scores (the answer's attention on them in excess of the prompt's, per head,
averaged over heads and layers); the top-k spans are returned, highest first.
"""

from __future__ import annotations

import bisect
import re

MAX_SPAN_CHARS = 300
_END = re.compile(r"[.!?]+(?=\s)|\n")


def sentence_spans(text: str, max_chars: int = MAX_SPAN_CHARS) -> list[tuple[int, int]]:
    """[(start, end)] character ranges covering the text's sentences (leading whitespace left out)."""
    cuts = [m.end() for m in _END.finditer(text)] + [len(text)]
    spans, prev = [], 0
    for end in cuts:
        start = prev
        while start < end and text[start].isspace():
            start += 1
        for a in range(start, end, max_chars):
            spans.append((a, min(a + max_chars, end)))
        prev = end
    return spans


def token_starts(tokenizer, text: str, prefix_ids: list[int]) -> tuple[int, list[int]]:
    """(where the document's tokens begin in the prefix, each token's first character in the text)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [a for a, _ in enc["offset_mapping"]]
    n = len(ids)
    if n and prefix_ids[-n:] == ids:
        return len(prefix_ids) - n, offsets
    # the template tokenized the document differently: its share of the prefix, spread evenly over the text
    n = min(len(prefix_ids), n or 1)
    return len(prefix_ids) - n, [len(text) * i // n for i in range(n)]


def top_spans(tokenizer, text: str, prefix_ids: list[int], scores: list[float], top_k: int) -> list[dict]:
    """The `top_k` spans of `text` with the most attention (`scores`: one per position of the document's prefix)."""
    begin, starts = token_starts(tokenizer, text, prefix_ids)
    spans = sentence_spans(text)
    if not spans:
        return []
    firsts = [a for a, _ in spans]
    mass = [0.0] * len(spans)
    for pos, ch in enumerate(starts):
        s = max(0, bisect.bisect_right(firsts, ch) - 1)
        mass[s] += scores[begin + pos]
    best = sorted(range(len(spans)), key=lambda i: -mass[i])[:top_k]
    return [{"start": spans[i][0], "end": spans[i][1], "text": text[spans[i][0] : spans[i][1]],
             "score": round(mass[i], 6)} for i in best]
