"""The grammar pieces on their own: masks from the bundled byte-level tokenizer and a GGUF-converted byte-level
BPE (merged tokens, specials), the packed bitmask applied on the logits' device leaving other rows untouched,
draft checking that stops at the first token the grammar refuses (and short of one that completes it) with the
matcher back where it began, and verify-step masks per draft position."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lighthouse.engine.structured.grammar import Grammars
from lighthouse.engine.structured.mask import (apply_packed, checked_drafts, mask_logits, mask_verify_logits, unpack,
                                               unpack_on_device)
from lighthouse.engine.options import StructuredOutput

V = 320
EOS = {257, 261}
OBJ = StructuredOutput("json_schema", schema={"type": "object", "properties": {"a": {"type": "integer"}},
                                              "required": ["a"], "additionalProperties": False})


@pytest.fixture(scope="module")
def grammars():
    from lighthouse.checkpoint import default_checkpoint_dir
    from lighthouse.tokenizer import load_tokenizer

    return Grammars(load_tokenizer(default_checkpoint_dir()), V, EOS)


def allowed(seqs, logits=None):
    logits = torch.zeros(len(seqs), V) if logits is None else logits
    out = mask_logits(logits, seqs)
    return [set(torch.nonzero(row > float("-inf"))[:, 0].tolist()) for row in out]


def test_masks_follow_the_grammar_and_rows_without_one_are_untouched(grammars):
    m = grammars.matchers(OBJ, 1)[0]
    seqs = [SimpleNamespace(grammar=None), SimpleNamespace(grammar=m)]
    logits = torch.randn(2, V)
    before = logits.clone()
    out = mask_logits(logits, seqs)
    assert torch.equal(out[0], before[0])
    assert set(torch.nonzero(out[1] > float("-inf"))[:, 0].tolist()) == {ord("{")}
    assert m.consume_tokens(list(b'{"a": 12'))
    assert allowed(seqs)[1] == {*range(ord("0"), ord("9") + 1), ord("}")}
    assert m.consume_token(ord("}")) and m.is_stopped()


def test_an_expanded_view_is_masked_in_a_copy(grammars):
    ms = grammars.matchers(OBJ, 2)
    row = torch.randn(V)
    out = mask_logits(row[None].expand(2, -1), [SimpleNamespace(grammar=m) for m in ms])
    assert (out > float("-inf")).sum(-1).tolist() == [1, 1] and torch.isfinite(row).all()


def test_apply_packed_reads_bit_t_of_word_t_over_32():
    packed = np.zeros((1, (V + 31) // 32), dtype=np.int32)
    for t in (0, 31, 32, 257, 319):
        packed[0, t // 32] |= np.int32(np.uint32(1 << (t % 32)).astype(np.int32))
    logits = torch.zeros(3, V)
    apply_packed(logits, [1], packed)
    assert set(torch.nonzero(logits[1] == 0)[:, 0].tolist()) == {0, 31, 32, 257, 319}
    assert (logits[0] == 0).all() and (logits[2] == 0).all()


def test_the_host_and_device_unpacking_agree_bit_for_bit():
    rng = np.random.default_rng(0)
    packed = rng.integers(-(2**31), 2**31, size=(5, (V + 31) // 32), dtype=np.int64).astype(np.int32)
    host, dev = unpack(packed, V, torch.device("cpu")), unpack_on_device(packed, V, torch.device("cpu"))
    assert host.shape == (5, V) and torch.equal(host, dev)
    assert bool(host[0, 33]) == bool((int(packed[0, 1]) >> 1) & 1)


def test_checked_drafts_stop_at_a_refused_token_and_leave_the_matcher_as_it_was(grammars):
    m = grammars.matchers(OBJ, 1)[0]
    assert m.consume_tokens(list(b'{"a'))
    want = allowed([SimpleNamespace(grammar=m)])[0]
    assert checked_drafts(m, list(b'": 1x}')) == list(b'": 1')  # 'x' is not a digit
    assert checked_drafts(m, list(b'": 17}')) == list(b'": 17'), "short of the token that completes the grammar"
    assert checked_drafts(m, list(b"b")) == []
    assert allowed([SimpleNamespace(grammar=m)])[0] == want and not m.is_error()


def test_verify_masks_each_draft_position_as_the_drafts_before_it_leave_the_grammar(grammars):
    m = grammars.matchers(OBJ, 1)[0]
    assert m.consume_tokens(list(b'{"a": '))
    drafts = [[], list(b"4")]  # row 0: no grammar, no drafts; row 1: one draft
    seqs = [SimpleNamespace(grammar=None), SimpleNamespace(grammar=m)]
    logits = torch.zeros(2, 2, V)
    out = mask_verify_logits(logits, seqs, drafts)
    assert (out[0] == 0).all()
    digits = set(range(ord("0"), ord("9") + 1))
    assert set(torch.nonzero(out[1, 0] == 0)[:, 0].tolist()) == digits | {ord("-")}
    assert set(torch.nonzero(out[1, 1] == 0)[:, 0].tolist()) == digits | {ord("}")}
    assert allowed([SimpleNamespace(grammar=m)])[0] == digits | {ord("-")}, "rolled back after the masks"


def test_a_gguf_converted_bpe_tokenizer_masks_its_merged_tokens(tmp_path):
    pytest.importorskip("gguf")
    from lighthouse.convert import convert_gguf
    from lighthouse.tokenizer import load_tokenizer

    path = Path(__file__).resolve().parents[2] / "convert" / "test_convert_gguf.py"
    spec = importlib.util.spec_from_file_location("gguf_fixture", path)
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    fixture.write_gguf(tmp_path / "m.gguf")
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    tok = load_tokenizer(tmp_path / "hf")
    hello = tok.convert_tokens_to_ids("hello")
    g = Grammars(tok, fixture.VOCAB, {tok.eos_token_id})
    m = g.matchers(StructuredOutput("choice", choices=("hello", "the 12"), param="guided_choice"), 1)[0]
    first = allowed([SimpleNamespace(grammar=m)], torch.zeros(1, fixture.VOCAB))[0]
    assert hello in first and tok.convert_tokens_to_ids("h") in first
    assert tok.convert_tokens_to_ids("l") not in first
    assert m.consume_token(hello) and m.is_stopped()
