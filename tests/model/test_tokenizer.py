"""The byte-level tokenizer is an HF tokenizers JSON; any other tokenizer.json loads too."""

from __future__ import annotations

import random

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer

from lighthouse.tokenizer import BOS_ID, EOS_ID, EOT_ID, encode_bytes, load_tokenizer, write_byte_tokenizer


def _random_text(rng: random.Random, n: int) -> str:
    pool = "abc XYZ 0123 \n\t.,;:!?\"'<>|{}" + "éüßøñ" + "中文字" + "🙂🚀" + "\x00\x7f"
    return "".join(rng.choice(pool) for _ in range(n))


def test_autotokenizer_loads_it_and_ids_are_utf8_bytes_after_bos(tmp_path):
    write_byte_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(0)
    for _ in range(20):
        text = _random_text(rng, 200)
        ids = tok(text)["input_ids"]
        assert ids == [BOS_ID, *encode_bytes(text)]
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_and_chat_tokens_have_fixed_ids(tmp_path):
    write_byte_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id) == (BOS_ID, EOS_ID)
    assert tok.convert_tokens_to_ids("<|eot_id|>") == EOT_ID
    assert tok("a<|eot_id|>", add_special_tokens=False)["input_ids"] == [97, EOT_ID]


def test_chat_template_renders_llama3_style_turns(tmp_path):
    write_byte_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(BOS_ID) == 1 and ids.count(EOT_ID) == 2


def test_any_tokenizer_json_loads_and_gets_a_chat_template(tmp_path):
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    assert tok("hello world again", add_special_tokens=False)["input_ids"] == [1, 2, 0]
    assert "user: hi" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert load_tokenizer(tmp_path / "tokenizer.json")("world")["input_ids"] == [2]
