"""How many bytes of text one token can cover, for a tokenizer: a prompt longer than max_model_len times that
cannot fit the context, so it is refused before the (slow, memory-hungry) tokenization.

The bound is the longest token's UTF-8 length (added tokens included, since they are matched in the text),
times how much the normalizer can shrink text. It is sound only for tokenizers that never drop input: the
known normalizers and pre-tokenizers below, and a model whose unknown-token handling covers one character at
a time. For any other tokenizer `max_bytes_per_token` returns None and no prompt is refused this way.
"""

from __future__ import annotations

import json
import math

# normalizer type -> how many times shorter (in UTF-8 bytes) it can make a text; absent: unknown (no bound)
_SHRINK = {"NFC": 3, "NFD": 3, "NFKC": 3, "NFKD": 3, "Lowercase": 3, "Prepend": 1, "ByteLevel": 1}
# pre-tokenizers that keep every input character (Whitespace, BertPreTokenizer, ... drop some)
_KEEPS_INPUT = {"ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts"}


def _shrink(normalizer: dict | None) -> int | None:
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        factors = [_shrink(n) for n in normalizer.get("normalizers", [])]
        return None if None in factors else math.prod(factors)
    if kind == "Replace":  # a literal replaced by a non-empty content shrinks at most len(pattern)/len(content)
        pattern, content = normalizer.get("pattern", {}).get("String"), normalizer.get("content", "")
        if pattern is None or not content:
            return None
        return max(1, math.ceil(len(pattern.encode()) / len(content.encode())))
    return _SHRINK.get(kind)


def _keeps_input(pre: dict | None) -> bool:
    if pre is None:
        return True
    kind = pre.get("type")
    if kind == "Sequence":
        return all(_keeps_input(p) for p in pre.get("pretokenizers", []))
    if kind == "Split":
        return pre.get("behavior") != "Removed"
    return kind in _KEEPS_INPUT


def _model_covers_one_char_per_unknown(model: dict) -> bool:
    kind = model.get("type")
    if kind == "BPE":
        return not (model.get("fuse_unk") and model.get("unk_token"))
    return False  # Unigram fuses unknown runs; WordPiece/WordLevel map a whole word to [UNK]


def max_bytes_per_token(tokenizer) -> int | None:
    """The most UTF-8 bytes of input one token of `tokenizer` (a transformers fast tokenizer) can stand for, or
    None when no sound bound is known for it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    factor = _shrink(spec.get("normalizer"))
    if factor is None or not _keeps_input(spec.get("pre_tokenizer")) or not _model_covers_one_char_per_unknown(
            spec.get("model", {})):
        return None
    longest = max(len(token.encode("utf-8", "surrogatepass")) for token in backend.get_vocab(with_added_tokens=True))
    return max(4, longest) * factor  # 4: an unknown character (one token) is up to 4 bytes
