"""Byte-level tokenizer expressed as an HF `tokenizers` JSON, and loading of any tokenizer.json.

Ids 0..255 are the UTF-8 bytes themselves (so `encode_bytes(text)` is just `text.encode()`), followed by
special tokens (BOS/EOS/pad and Llama-3-style chat markers). Built as a byte-level BPE with no merges, which
`transformers.AutoTokenizer.from_pretrained` loads as a `PreTrainedTokenizerFast`. The tokenizer adds BOS
(like Llama 3); the chat template writes BOS itself, so chat prompts are encoded with add_special_tokens=False.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPECIAL_TOKENS = [
    "<|begin_of_text|>",  # 256 BOS
    "<|end_of_text|>",  # 257 EOS
    "<|pad|>",  # 258
    "<|start_header_id|>",  # 259
    "<|end_header_id|>",  # 260
    "<|eot_id|>",  # 261 end of a chat turn (also a generation stop token)
]
BOS_ID, EOS_ID, PAD_ID, START_HEADER_ID, END_HEADER_ID, EOT_ID = 256, 257, 258, 259, 260, 261

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# the roles a chat template is given: the byte template, ChatML and Llama 3 know these three (tool turns are refused
# until tool calling exists)
CHAT_ROLES = ("system", "user", "assistant")
# for tokenizers shipped without one (markers-free, works with any vocabulary)
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def encode_bytes(text: str) -> list[int]:
    """The byte tokenizer's ids for `text`, without specials (fast path used by the trainer)."""
    return list(text.encode("utf-8"))


def plain_text_encoder(tokenizer):
    """`encode(text) -> ids` that reads every character as text: a special token's string (`<|eot_id|>`,
    `<|im_start|>`) becomes the ids of its characters, never the special token, and no BOS is added.

    For a fast tokenizer this is a private copy of its `tokenizers` backend with `encode_special_tokens` set once:
    transformers' per-call `split_special_tokens=True` flips that flag on the shared backend, so two threads
    tokenizing at once could each see the other's setting. Other tokenizers take the per-call argument.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.encode_special_tokens = True
    plain.no_truncation()
    plain.no_padding()
    return lambda text: plain.encode(text, add_special_tokens=False).ids


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable-unicode alias for each byte (what the ByteLevel pre-tokenizer emits)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_tokenizer_json() -> dict:
    """The tokenizer.json content of the byte-level tokenizer."""
    b2u = _byte_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    added = [
        {"id": 256 + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    bos = SPECIAL_TOKENS[0]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [BOS_ID], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": [],
        },
    }


def byte_tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1],
        "pad_token": SPECIAL_TOKENS[2],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(256 + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }


def write_byte_tokenizer(out_dir: str | os.PathLike, model_max_length: int = 16384) -> None:
    """Write tokenizer.json + tokenizer_config.json (+ special_tokens_map.json) into out_dir, atomically per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[2]}
    for name, content in (
        ("tokenizer.json", byte_tokenizer_json()),
        ("tokenizer_config.json", byte_tokenizer_config(model_max_length)),
        ("special_tokens_map.json", specials),
    ):
        _atomic_write_text(out / name, json.dumps(content, indent=2, ensure_ascii=False))


def byte_tokenizer(model_max_length: int = 16384):
    """An in-memory PreTrainedTokenizerFast for the byte-level tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    cfg = byte_tokenizer_config(model_max_length)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(byte_tokenizer_json())),
        bos_token=cfg["bos_token"], eos_token=cfg["eos_token"], pad_token=cfg["pad_token"],
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


# What a checkpoint folder may carry as its tokenizer (any one): the fast tokenizer's JSON, or the files the slow
# tokenizer classes read (transformers converts them): a SentencePiece model, or a byte-level BPE's vocab + merges.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))
TOKENIZER_FILES_TEXT = "tokenizer.json, or tokenizer.model (SentencePiece), or vocab.json + merges.txt"


def tokenizer_files(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The first of TOKENIZER_FILES that the folder holds whole, or None."""
    p = Path(path)
    return next((names for names in TOKENIZER_FILES if all((p / n).is_file() for n in names)), None)


def _byte_level_bpe(vocab: Path, merges: Path):
    """GPT-2's layout: a byte-level BPE from its vocab.json + merges.txt (ByteLevel pre-tokenizer and decoder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def load_tokenizer(path: str | os.PathLike):
    """A `PreTrainedTokenizerFast` from a checkpoint directory (or a tokenizer.json file).

    Any HF tokenizer.json loads; without one, tokenizer.model or vocab.json + merges.txt load through transformers'
    tokenizer classes (as named by tokenizer_config.json, or byte-level BPE for vocab + merges alone). A tokenizer
    without a chat template gets a plain "role: content" one.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    files = None if p.is_file() else tokenizer_files(p)
    if p.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
    elif files is not None and (p / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(str(p), use_fast=True)
    elif files == ("tokenizer.json",):
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p / "tokenizer.json"))
    elif files == ("vocab.json", "merges.txt"):
        tok = PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(p / "vocab.json", p / "merges.txt"))
    elif files == ("tokenizer.model",):
        raise FileNotFoundError(f"{p} has tokenizer.model but no tokenizer_config.json naming its tokenizer class; "
                                "add the model's tokenizer_config.json (or a tokenizer.json)")
    else:
        raise FileNotFoundError(f"no tokenizer in {p}: a checkpoint folder needs {TOKENIZER_FILES_TEXT}")
    if not getattr(tok, "chat_template", None):
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
