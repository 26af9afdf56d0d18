"""A checkpoint folder without tokenizer.json loads its tokenizer from what model repositories also ship:
tokenizer.model (SentencePiece) + tokenizer_config.json, or vocab.json + merges.txt (byte-level BPE); a folder
with none of them is refused naming all three."""

from __future__ import annotations

import json
import shutil

import pytest

from lighthouse.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint
from lighthouse.tokenizer import load_tokenizer

TEXT = "The pass key is 66048. Remember it."


def bare(tmp_path, tiny_checkpoint):
    """The tiny checkpoint's weights and config with no tokenizer files."""
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    return out


def test_a_folder_without_a_tokenizer_is_refused_naming_what_would_do(tmp_path, tiny_checkpoint):
    out = bare(tmp_path, tiny_checkpoint)
    verify_checkpoint(out)  # weights alone are a checkpoint (training reads no tokenizer)
    with pytest.raises(CheckpointError, match=r"tokenizer.json, or tokenizer.model \(SentencePiece\), or vocab.json"):
        verify_checkpoint(out, require_tokenizer=True)


def test_vocab_and_merges_load_as_byte_level_bpe(tmp_path, tiny_checkpoint):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([TEXT] * 20, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = bare(tmp_path, tiny_checkpoint)
    bpe.model.save(str(out))  # vocab.json + merges.txt
    verify_checkpoint(out, require_tokenizer=True)
    _, tok = load_checkpoint(out)
    assert tok.encode(TEXT, add_special_tokens=False) == bpe.encode(TEXT).ids
    assert tok.decode(tok.encode(TEXT, add_special_tokens=False)) == TEXT


def test_a_sentencepiece_model_with_its_config_loads_through_transformers(tmp_path, tiny_checkpoint):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([TEXT, "Lighthouse pools queries, keys and values.", "Ask questions of documents."] * 50))
    out = bare(tmp_path, tiny_checkpoint)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "tokenizer"), vocab_size=60,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    (out / "tokenizer.vocab").unlink()
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                                           "eos_token": "</s>", "unk_token": "<unk>"}))
    verify_checkpoint(out, require_tokenizer=True)
    tok = load_tokenizer(out)
    want = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model")).encode(TEXT)
    assert tok.encode(TEXT, add_special_tokens=False) == want
    assert tok.decode(want) == TEXT
