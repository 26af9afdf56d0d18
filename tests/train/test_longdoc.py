"""lighthouse.train.longdoc: long-document retrieval samples over a tokenized corpus of real-looking text.

The corpus is fabricated here (numbered sentences, so every token's source offset can be read back from the
text), tokenized with the byte tokenizer (one token per byte: decoding is exact) and, where the prepared SmolLM2
folder exists, with SmolLM2's tokenizer and chat template.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from lighthouse.tokenizer import START_HEADER_ID, byte_tokenizer
from lighthouse.train.config import ConfigError, TrainConfig
from lighthouse.train.longdoc import LONGDOC_TASKS, LongDocStream, TokenizedCorpus, make_probe

SMOLLM2 = Path.home() / ".cache/lighthouse/models/smollm2-135m-instruct"
SENTENCES_PER_DOC = 3000


def _write_corpus(root: Path) -> Path:
    for source, names in (("alpha", ("one", "two")), ("beta", ("three",))):
        (root / source).mkdir(parents=True)
        for name in names:
            paras = [" ".join(f"Sentence {i:06d} of {name} is here." for i in range(p, p + 8))
                     for p in range(0, SENTENCES_PER_DOC, 8)]
            (root / source / f"{name}.txt").write_text("\n\n".join(paras) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus(corpus_dir: Path) -> TokenizedCorpus:
    return TokenizedCorpus(corpus_dir, byte_tokenizer())


_TOK = byte_tokenizer()


def _text(ids: torch.Tensor) -> str:
    return _TOK.decode(ids.tolist())


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    idx = mask.nonzero().flatten().tolist()
    runs, start = [], None
    for a, b in zip(idx, idx[1:] + [None]):
        start = a if start is None else start
        if b != a + 1:
            runs.append((start, a + 1))
            start = None
    return runs


def _probe(stream: LongDocStream, index: int):
    """The probe sample `index` asks (the stream draws it from the same RNG, in this order)."""
    rng = stream.rng(index)
    assert rng.random() >= stream.lm_fraction
    return make_probe(rng.choice(stream.tasks), rng)


def _document(text: str) -> str:
    start = text.index("user<|end_header_id|>\n\n") + len("user<|end_header_id|>\n\n")
    return text[start : text.rindex("\n\nQuestion: ")]


def test_every_sample_is_exactly_seq_len_with_loss_on_every_token(corpus):
    for seq_len in (2048, 4096, 6000):
        stream = LongDocStream(corpus, seq_len, seed=3, lm_fraction=0.3)
        for i in range(12):
            s = stream[i]
            assert s.input_ids.shape == s.labels.shape == s.answer_mask.shape == (seq_len,)
            assert torch.equal(s.input_ids, s.labels) and s.input_ids.dtype == torch.long
            assert s.answer_mask.dtype == torch.bool
        b = stream.batch([0, 1, 2])
        assert b["input_ids"].shape == (3, seq_len) and torch.equal(b["input_ids"][1], stream[1].input_ids)


@pytest.mark.parametrize("task", LONGDOC_TASKS)
def test_asked_values_are_in_the_document_and_exactly_under_the_answer_mask(corpus, task):
    stream = LongDocStream(corpus, 4096, seed=0, tasks=(task,), lm_fraction=0.0)
    for i in range(6):
        s, probe = stream[i], _probe(stream, i)
        values = [probe.answer[a:b] for a, b in probe.spans]
        masked = [_text(s.input_ids[a:b]) for a, b in _runs(s.answer_mask)]
        assert masked == values, (task, masked, probe.answer)
        text = _text(s.input_ids)
        doc = _document(text)
        for v in values:
            assert v in doc
        assert text.endswith(f"<|start_header_id|>assistant<|end_header_id|>\n\n{probe.answer}<|eot_id|><|end_of_text|>")
        assert f"Question: {probe.question}" in text


@pytest.mark.parametrize("task", LONGDOC_TASKS)
def test_needles_sit_whole_at_sentence_boundaries(corpus, task):
    stream = LongDocStream(corpus, 4096, seed=1, tasks=(task,), lm_fraction=0.0)
    for i in range(6):
        doc, probe = _document(_text(stream[i].input_ids)), _probe(stream, i)
        for needle in probe.needles:
            assert doc.count(needle) == 1, (needle, task)
            at = doc.index(needle)
            after_sentence = doc[at - 2 : at] in (". ", "! ", "? ")
            assert at == 0 or after_sentence or doc[at - 1] == "\n", doc[at - 40 : at + len(needle)]
            assert at + len(needle) == len(doc) or doc[at + len(needle)].isspace()


def test_single_facts_are_asked_about_the_key_of_the_needle_that_holds_them(corpus):
    stream = LongDocStream(corpus, 4096, seed=2, tasks=("facts",), lm_fraction=0.0)
    for i in range(8):
        s, probe = stream[i], _probe(stream, i)
        key = re.search(r"the ([\w-]+ \w+)\?$", probe.question)[1]
        value = _text(s.input_ids[s.answer_mask]).strip()
        holders = [n for n in probe.needles if key in n]
        assert len(holders) == 1 and holders[0].endswith(f" {value}."), (key, value, probe.needles)
        assert sum(value in n for n in probe.needles) == 1  # the distractors hold other values


def test_chat_template_markers_wrap_the_document_question_and_answer(corpus):
    stream = LongDocStream(corpus, 4096, seed=0, lm_fraction=0.0, system_fraction=0.5)
    systems = 0
    for i in range(10):
        s = stream[i]
        text = _text(s.input_ids)
        assert s.input_ids[0].item() == _TOK.bos_token_id
        assert (s.input_ids == START_HEADER_ID).sum() in (2, 3)  # [system,] user, assistant
        assert text.index("user<|end_header_id|>") < text.index("Question: ") < text.index("assistant<|end_header_id|>")
        systems += "Answer the question using only the document. Be concise." in text
    assert 0 < systems < 10


def test_language_modelling_windows_are_plain_text_with_no_answer(corpus):
    stream = LongDocStream(corpus, 2048, seed=0, lm_fraction=1.0)
    for i in range(5):
        s = stream[i]
        assert not s.answer_mask.any() and not (s.input_ids >= 256).any()
        assert re.search(r"Sentence \d{6} of (one|two|three) is here\.", _text(s.input_ids))


def test_samples_are_a_pure_function_of_seed_split_and_index(corpus):
    a = LongDocStream(corpus, 4096, seed=5, lm_fraction=0.2)
    b = LongDocStream(corpus, 4096, seed=5, lm_fraction=0.2)
    for i in (0, 7, 123):
        for x, y in zip(vars(a[i]).values(), vars(b[i]).values()):
            assert torch.equal(x, y)
    assert not torch.equal(a[0].input_ids, a[1].input_ids)
    assert not torch.equal(a[0].input_ids, LongDocStream(corpus, 4096, seed=6, lm_fraction=0.2)[0].input_ids)
    assert not torch.equal(a[0].input_ids, LongDocStream(corpus, 4096, seed=5, split="eval", lm_fraction=0.2)[0].input_ids)


def _sentences(stream: LongDocStream, n: int) -> set[tuple[str, int]]:
    found = set()
    for i in range(n):
        found |= {(m[2], int(m[1])) for m in re.finditer(r"Sentence (\d{6}) of (\w+) is here\.", _text(stream[i].input_ids))}
    return found


def test_the_eval_split_reads_only_the_held_out_end_of_every_document(corpus):
    train = _sentences(LongDocStream(corpus, 4096, seed=0, lm_fraction=0.5), 40)
    held = _sentences(LongDocStream(corpus, 4096, seed=0, split="eval", lm_fraction=0.5), 40)
    assert train and held and not train & held
    # a document's last 5% of tokens: the last ~150 sentences of each (the one cut at the boundary is in neither)
    assert max(i for _, i in train) < min(i for _, i in held) and min(i for _, i in held) > 0.9 * SENTENCES_PER_DOC
    assert {name for name, _ in held} == {"one", "two", "three"}


def test_needle_depths_spread_over_the_whole_document(corpus):
    stream = LongDocStream(corpus, 4096, seed=0, tasks=("fact",), lm_fraction=0.0)
    depths = []
    for i in range(60):
        doc, probe = _document(_text(stream[i].input_ids)), _probe(stream, i)
        depths.append(doc.index(probe.needles[0]) / len(doc))
    assert min(depths) < 0.1 and max(depths) > 0.9
    assert 0.35 < sum(depths) / len(depths) < 0.65


def test_a_512k_sample_builds_in_under_two_seconds(corpus):
    for split in ("train", "eval"):  # the eval text (5%) is far shorter: documents repeat to fill it
        stream = LongDocStream(corpus, 524288, seed=0, split=split, lm_fraction=0.0)
        stream[0]  # first touch of the memory map
        t0 = time.perf_counter()
        s = stream[1]
        took = time.perf_counter() - t0
        assert s.input_ids.shape == (524288,) and s.answer_mask.any()
        assert took < 2.0, f"{took:.2f}s"


def test_the_corpus_is_tokenized_once_per_tokenizer(corpus_dir, corpus):
    logged = []
    again = TokenizedCorpus(corpus_dir, byte_tokenizer(), log=logged.append)
    assert not logged and again.cache == corpus.cache
    assert again.tokens.dtype.itemsize == 2 and len(again.tokens) == sum(d["end"] - d["start"] for d in again.docs)
    assert {d["source"] for d in again.docs} == {"alpha", "beta"}


def test_a_missing_corpus_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="lighthouse.train.text_sources --out"):
        TokenizedCorpus(tmp_path, byte_tokenizer())


def test_config_routes_build_streams_to_the_long_document_stream(corpus_dir):
    from lighthouse.train.data import build_streams

    cfg = TrainConfig(seq_len=2048, longdoc=str(corpus_dir), longdoc_tasks=("chain",), longdoc_lm_fraction=0.0)
    cfg.validate()
    train, held = build_streams(cfg)
    assert isinstance(train, LongDocStream) and (train.split, held.split) == ("train", "eval")
    assert train.tasks == ("chain",) and train[0].input_ids.shape == (2048,)
    assert TrainConfig().longdoc_tasks == LONGDOC_TASKS  # the default asks every task


@pytest.mark.parametrize("change, message", [
    (dict(longdoc="/nonexistent/corpus"), "text_sources --out"),
    (dict(longdoc_tasks=("passkey",)), "choose from fact facts"),
    (dict(longdoc_lm_fraction=1.5), r"longdoc_lm_fraction must be in \[0, 1\]"),
    (dict(seq_len=1024), "--seq-len >= 2048"),
    (dict(data=["stdlib"]), "--data none"),
    (dict(curriculum=True), "--no-curriculum"),
])
def test_longdoc_config_errors_say_what_to_change(corpus_dir, change, message):
    cfg = TrainConfig(seq_len=4096, longdoc=str(corpus_dir))
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_cli_flags_set_the_longdoc_fields(corpus_dir):
    import argparse

    from lighthouse.train.cli import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--init-from", "some/model", "--longdoc", str(corpus_dir), "--longdoc-tasks",
                                         "fact", "chain", "--longdoc-lm-fraction", "0.25"]))
    assert (cfg.longdoc, cfg.longdoc_tasks, cfg.longdoc_lm_fraction) == (str(corpus_dir), ("fact", "chain"), 0.25)
    assert cfg.data == []  # --init-from needs no --data when --longdoc is given


@pytest.mark.skipif(not (SMOLLM2 / "tokenizer.json").exists(), reason="the prepared SmolLM2 folder is not here")
@pytest.mark.parametrize("task", LONGDOC_TASKS)
def test_smollm2_samples_decode_to_chatml_with_the_answers_masked(corpus_dir, task):
    from lighthouse.tokenizer import load_tokenizer

    tok = load_tokenizer(SMOLLM2)
    stream = LongDocStream(TokenizedCorpus(corpus_dir, tok), 8192, seed=0, tasks=(task,), lm_fraction=0.0)
    for i in range(3):
        s, probe = stream[i], _probe(stream, i)
        text = tok.decode(s.input_ids.tolist())
        assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
        assert text.endswith(f"<|im_start|>assistant\n{probe.answer}<|im_end|>\n")
        masked = [tok.decode(s.input_ids[a:b].tolist()).strip() for a, b in _runs(s.answer_mask)]
        assert masked == [probe.answer[a:b] for a, b in probe.spans]
        doc = text[text.index("<|im_start|>user\n") : text.rindex("\n\nQuestion: ")]
        assert all(n in doc for n in probe.needles)
