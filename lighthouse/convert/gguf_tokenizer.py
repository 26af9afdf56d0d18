"""A GGUF file's tokenizer (its `tokenizer.ggml.*` metadata) -> HF tokenizer files.

llama.cpp's convert_hf_to_gguf.py stores a byte-level BPE tokenizer (`tokenizer.ggml.model` "gpt2") as:
`tokens` (the HF vocabulary's strings, already in GPT-2's byte-to-unicode alphabet, in id order), `token_type`
(1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), `merges` ("left right", in rank order),
`pre` (the name of the pre-tokenizer regex llama.cpp applies, chosen by a hash of the HF tokenizer's output), the
special ids (`bos_token_id`, `eos_token_id`, `unknown_token_id`, `padding_token_id`, `eot_token_id`, ...),
`add_bos_token` / `add_eos_token`, and the chat template at `tokenizer.chat_template`.

This module rebuilds a `tokenizers` BPE from them. The pre-tokenizer of each supported `pre` name writes, in HF
terms, the regex llama.cpp's llama-vocab.cpp uses for it:
- GPT2_PRE ("gpt-2", "phi-2", "mpt", "olmo", "jais"): GPT-2's regex alone: ByteLevel(use_regex=True).
- DIGITS_PRE ("smollm", "starcoder", "refact", "codeshell"): "\\p{N}" first, then GPT-2's regex:
  Digits(individual_digits=True) then ByteLevel(use_regex=True), as SmolLM2's own tokenizer.json does.
- LLAMA3_PRE ("llama-bpe", "llama3", "llama-v3"): Llama 3's regex (digits in groups of up to 3) as a Split,
  then ByteLevel(use_regex=False); the BPE ignores merges for whole-vocabulary words, and BOS is added unless the
  file says otherwise (llama.cpp's defaults for that type).
- QWEN2_PRE ("qwen2": Qwen2, Qwen2.5 and Qwen3 files): Qwen2's regex (digits one by one) as a Split, then
  ByteLevel(use_regex=False), after an NFC normalizer, as Qwen's own tokenizer.json does (llama.cpp skips the NFC
  step: the two differ only on text that is not already NFC). BOS is not added unless the file says so.
Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added tokens, so both are
matched whole in text. Other tokenizer models (SentencePiece "llama", "bert", "t5", ...) and other `pre` names
raise ConversionError listing what is supported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lighthouse.convert.torchtitan_args import ConversionError

GPT2_PRE = ("gpt-2", "phi-2", "mpt", "olmo", "jais")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell")
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
QWEN2_PRE = ("qwen2",)
SUPPORTED_PRE = GPT2_PRE + DIGITS_PRE + LLAMA3_PRE + QWEN2_PRE
CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class GGUFTokenizer:
    """What `write_tokenizer` writes: tokenizer.json's content plus the ids and strings of tokenizer_config.json."""

    tokenizer_json: dict[str, Any]
    special: dict[str, str]  # "bos_token" / "eos_token" / "unk_token" / "pad_token" -> the token's string
    ids: dict[str, int | None]  # bos_token_id, eos_token_id, pad_token_id
    stop_ids: list[int]  # EOS, then end-of-turn / end-of-message ids: generation_config's eos_token_id
    chat_template: str | None
    description: str  # e.g. "gpt2 BPE, pre-tokenizer smollm, 49152 tokens, 48900 merges"
    added: list[dict[str, Any]] = field(default_factory=list)


def _pre_tokenizer(pre: str) -> dict[str, Any]:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre in GPT2_PRE:
        return byte_level
    if pre in DIGITS_PRE:
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    regex = QWEN2_REGEX if pre in QWEN2_PRE else LLAMA3_REGEX
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}


def _merge_pairs(merges: list[str]) -> list[list[str]]:
    """"left right" -> [left, right], split at the first space after the first character (as llama.cpp does)."""
    pairs = []
    for m in merges:
        cut = m.find(" ", 1)
        if cut < 0:
            raise ConversionError(f"tokenizer.ggml.merges has an entry without a space: {m!r}")
        pairs.append([m[:cut], m[cut + 1:]])
    return pairs


def _post_processor(tokens: list[str], bos: int | None, eos: int | None, add_bos: bool, add_eos: bool):
    if not ((add_bos and bos is not None) or (add_eos and eos is not None)):
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    ends = [(i, add) for i, add in ((bos, add_bos), (eos, add_eos)) if add and i is not None]
    before = [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}] if add_bos and bos is not None else []
    after = [{"SpecialToken": {"id": tokens[eos], "type_id": 0}}] if add_eos and eos is not None else []
    seq = lambda name, t: {"Sequence": {"id": name, "type_id": t}}
    return {"type": "TemplateProcessing", "single": before + [seq("A", 0)] + after,
            "pair": before + [seq("A", 0)] + after + [seq("B", 1)] + after,
            "special_tokens": {tokens[i]: {"id": tokens[i], "ids": [i], "tokens": [tokens[i]]} for i, _ in ends}}


def build_tokenizer(meta: dict[str, Any], source: str = "the GGUF file") -> GGUFTokenizer:
    """The HF tokenizer described by a GGUF's metadata (`meta`: key -> value, as `read_metadata` returns)."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ConversionError(f"{source} has no tokenizer (no tokenizer.ggml.model key)")
    if model != "gpt2":
        kind = {"llama": "SentencePiece", "bert": "WordPiece", "t5": "Unigram"}.get(model, "")
        raise ConversionError(f"{source} has tokenizer model {model!r}{f' ({kind})' if kind else ''}, which is not "
                              "supported: only 'gpt2' (byte-level BPE) tokenizers convert")
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in SUPPORTED_PRE:
        what = f"pre-tokenizer {pre!r}" if pre else "no pre-tokenizer (tokenizer.ggml.pre)"
        raise ConversionError(f"{source} names {what}; supported: {', '.join(SUPPORTED_PRE)}")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = _merge_pairs(list(meta.get("tokenizer.ggml.merges") or []))

    def tid(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is None or not 0 <= int(v) < len(tokens):
            return None
        return int(v)

    bos, eos, unk, pad = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id"), tid("padding_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", pre in LLAMA3_PRE))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": ty == CONTROL} for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)]
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"} if pre in QWEN2_PRE else None,
        "pre_tokenizer": _pre_tokenizer(pre),
        "post_processor": _post_processor(tokens, bos, eos, add_bos, add_eos),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": pre in LLAMA3_PRE, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    if len(tokenizer_json["model"]["vocab"]) != len(tokens):
        raise ConversionError(f"{source} lists some token strings twice in tokenizer.ggml.tokens")
    special = {name: tokens[i] for name, i in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk),
                                              ("pad_token", pad)) if i is not None}
    stops = [i for i in (eos, tid("eot_token_id"), tid("eom_token_id")) if i is not None]
    return GGUFTokenizer(
        tokenizer_json=tokenizer_json, special=special,
        ids={"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad},
        stop_ids=list(dict.fromkeys(stops)), chat_template=meta.get("tokenizer.chat_template"), added=added,
        description=f"{model} BPE, pre-tokenizer {pre}, {len(tokens)} tokens, {len(merges)} merges",
    )


def write_tokenizer(tok: GGUFTokenizer, out_dir: str | os.PathLike, *, model_max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json into out_dir.
    tokenizer.json is checked by loading it with `tokenizers` first."""
    from tokenizers import Tokenizer

    out = Path(out_dir)
    text = json.dumps(tok.tokenizer_json, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - whatever `tokenizers` rejects is reported with its reason
        raise ConversionError(f"the tokenizer built from the GGUF metadata does not load: {exc}") from None
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", **tok.special, "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                 "single_word", "special")} for a in tok.added},
    }
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(tok.special, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
