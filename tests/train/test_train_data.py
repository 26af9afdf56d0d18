"""Training data: synthetic tasks, text/JSONL/stdlib sources, packing, and index-determinism."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

from lighthouse.tokenizer import BOS_ID, EOS_ID
from lighthouse.train.data import IGNORE_INDEX, SequenceStream, TextCorpus
from lighthouse.train.passkey import passkey_prompts
from lighthouse.train.synthetic import TASKS, kv_doc, multihop_doc, passkey_doc, synthetic_doc


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("n", [400, 1000, 5000])
def test_synthetic_docs_have_exact_length_and_answers_that_are_retrievable(task, n):
    rng = random.Random(n)
    doc = synthetic_doc(rng, n, tasks=(task,))
    assert len(doc.text) == n and doc.text.isascii() and doc.answers
    for a, b in doc.answers:
        answer = doc.text[a:b]
        assert answer.isdigit()
        assert answer in doc.text[:a]  # the needle holding it comes earlier


def test_kv_questions_ask_for_the_value_stored_under_that_record():
    doc = kv_doc(random.Random(3), 6000)
    for a, b in doc.answers:
        key = re.findall(r"Record (\d+) holds value $", doc.text[:a])[0]
        assert re.search(rf"Record {key} holds value {doc.text[a:b]}\. ", doc.text[: a - 40])


def test_multihop_answer_needs_two_hops():
    doc = multihop_doc(random.Random(5), 3000)
    (a, b), = doc.answers
    asked = re.findall(r"What does the (\w+ of \w+) hold\? It holds $", doc.text[:a])[0]
    via = re.findall(rf"The {asked} holds what the (\w+ of \w+) holds\.", doc.text)[0]
    assert f"The {via} holds {doc.text[a:b]}." in doc.text


def test_passkey_depth_places_the_needle_where_asked():
    for depth in (0.1, 0.5, 0.9):
        doc = passkey_doc(random.Random(0), 8000, depth=depth)
        pos = doc.text.index("The pass key is")
        assert abs(pos / 8000 - depth) < 0.05


def test_passkey_prompts_are_exactly_context_tokens_and_end_with_the_question():
    for depth, ids, key in passkey_prompts(2048, [0.5], 2, seed=0):
        assert ids.shape == (2048,) and ids[0] == BOS_ID and len(key) == 5
        assert bytes(ids[-20:].tolist()).decode().endswith("The pass key is ")


def test_sequences_are_packed_to_seq_len_with_bos_eos_documents():
    stream = SequenceStream(2048, seed=0)
    for i in range(5):
        s = stream[i]
        ids = s.input_ids.tolist()
        assert len(ids) == 2048 and ids[0] == BOS_ID
        n_docs = ids.count(BOS_ID)
        assert n_docs >= 1 and ids.count(EOS_ID) == n_docs
        assert int(s.answer_mask.sum()) > 0
        assert all(0x30 <= t <= 0x39 for t, m in zip(ids, s.answer_mask.tolist()) if m)
        pad = (s.labels == IGNORE_INDEX).sum().item()
        assert pad < 400


def test_sample_i_depends_only_on_seed_split_and_index():
    a, b = SequenceStream(1024, seed=7), SequenceStream(1024, seed=7)
    assert a[5].input_ids.equal(b[5].input_ids)
    assert a.batch([3, 4])["input_ids"][1].equal(b.batch([4])["input_ids"][0])
    assert not a[5].input_ids.equal(SequenceStream(1024, seed=8)[5].input_ids)
    assert not a[5].input_ids.equal(SequenceStream(1024, seed=7, split="eval")[5].input_ids)


def test_text_files_folders_and_jsonl_are_read_and_packed(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha " * 50)
    (tmp_path / "docs" / "b.md").write_text("beta " * 400)
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00" * 10)
    rows = [{"text": "gamma " * 30}, {"content": "delta " * 30}, "epsilon " * 30]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    corpus = TextCorpus([str(tmp_path / "docs"), str(tmp_path / "c.jsonl")])
    assert len(corpus.docs) == 5
    stream = SequenceStream(1024, seed=0, corpus=corpus, synthetic_fraction=0.0)
    text = bytes(t for t in stream[0].input_ids.tolist() if t < 256).decode()
    assert len(stream[0].input_ids) == 1024 and (stream[0].labels != IGNORE_INDEX).all()
    assert re.search("alpha|beta|gamma|delta|epsilon", text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextCorpus([str(tmp_path / "missing")])
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        TextCorpus([str(tmp_path / "bad.jsonl")])


def test_stdlib_source_is_available_as_training_text_with_a_held_out_split():
    corpus = TextCorpus(["stdlib"])
    train, held = set(corpus.split("train")), set(corpus.split("eval"))
    assert len(corpus.docs) > 100 and held and not (train & held)
    assert b"def " in b"".join(corpus.read(i) for i in sorted(held)[:5])


def test_passkey_accuracy_reports_dense_and_sparse_records_with_the_sparse_layers_used():
    import torch

    from lighthouse.model import LlamaForCausalLM, model_preset
    from lighthouse.train.passkey import passkey_accuracy

    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    recs = passkey_accuracy(model, [640], depths=[0.5], trials=2, dense_tail_tokens=64, batch_size=2)
    assert [(r["context"], r["prefill"], r["n"]) for r in recs] == [(640, "dense", 2), (640, "sparse", 2)]
    assert recs[0]["lighthouse_layers"] == [] and recs[1]["lighthouse_layers"] == [0, 1]
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["samples"]) == 2 for r in recs)


def test_curriculum_documents_grow_with_the_step_and_sequences_stay_exactly_seq_len():
    from lighthouse.train.config import train_preset
    from lighthouse.train.data import build_streams

    seq_len, ramp = 4096, 400  # documents reach seq_len at sample 400
    stream = SequenceStream(seq_len, seed=0, curriculum_start_len=256, curriculum_samples=ramp)
    caps = [stream.max_doc_len(i) for i in (0, 100, 200, 300, 399, 400, 1000)]
    assert caps[0] == 256 and caps == sorted(caps) and caps[-2:] == [seq_len, seq_len]

    def doc_lengths(s):
        ids = s.input_ids.tolist()
        starts = [i for i, t in enumerate(ids) if t == BOS_ID]
        return [b - a for a, b in zip(starts, starts[1:] + [len(ids)])]

    means = []
    for lo_i in (0, 150, 300):
        lens = []
        for i in range(lo_i, lo_i + 6):
            s = stream[i]
            ids = s.input_ids.tolist()
            assert len(ids) == seq_len and ids[0] == BOS_ID and ids.count(EOS_ID) == ids.count(BOS_ID)
            assert (s.labels == IGNORE_INDEX).sum() == 0  # packed to exactly seq_len: no padding
            assert int(s.answer_mask.sum()) > 0
            assert all(0x30 <= t <= 0x39 for t, m in zip(ids, s.answer_mask.tolist()) if m)
            docs = doc_lengths(s)  # BOS + text + EOS; text is at least 256 bytes
            assert all(n <= max(258, stream.max_doc_len(i)) for n in docs[:-1])  # only the last may exceed the cap
            assert docs[-1] < max(258, stream.max_doc_len(i)) + 2 * 258
            lens += docs
        if lo_i == 0:  # many short documents per sequence
            assert len(lens) >= 6 * 10
        means.append(sum(lens) / len(lens))
    assert means[0] < means[1] < means[2]
    # past the ramp a sample is exactly what it is without a curriculum
    assert stream[ramp + 3].input_ids.equal(SequenceStream(seq_len, seed=0)[ramp + 3].input_ids)
    # off by default; the trainer's streams get it from the config
    cfg = train_preset("tiny")
    assert build_streams(cfg)[0].curriculum_samples == 0
    cfg.curriculum, cfg.max_steps, cfg.curriculum_fraction = True, 100, 0.5
    train, ev = build_streams(cfg)
    assert train.curriculum_samples == 50 * cfg.batch_size and ev.curriculum_samples == 0


def test_step_loader_yields_each_ranks_share_of_each_step_in_order_with_or_without_workers():
    from lighthouse.train.data import SequenceStream, step_loader

    st = SequenceStream(512, seed=3)
    for workers in (0, 2):
        got = list(step_loader(st, 5, 3, batch_size=4, micro_batch_size=1, rank=1, world=2, workers=workers))
        assert len(got) == 3
        for s, micro in enumerate(got):  # step 5 + s, rank 1 of 2: samples (5+s)*4 + 2 and + 3, one per micro-batch
            assert len(micro) == 2
            for j, b in enumerate(micro):
                want = st.batch([(5 + s) * 4 + 2 + j])
                assert all(torch.equal(b[k], want[k]) for k in want)


def test_echo_filler_lines_repeat_their_block_exactly():
    from lighthouse.train.synthetic import make_filler

    text, bounds = make_filler(random.Random(4), "echo", 3000)
    assert len(text) == 3000 and bounds[0] == 0 and all(text[b - 1] == "\n" for b in bounds[1:])
    lines = text.split("\n")[:-1]  # the last line is cut at n_chars
    assert len(lines) > 20
    for line in lines:
        a, b = line.split("|")
        assert a == b and 8 <= len(a) <= 32 and re.fullmatch(r"[a-z0-9]+", a)
