"""The bundled default checkpoint retrieves 5-digit passkeys from long synthetic documents (issue #3's bar), on the
CPU, under dense prefill and under sparse prefill with its Lighthouse layers really running the op.

The prompts are bench/evals/passkey_eval.py's (seeded, needle at 5 depths); the thresholds sit below the accuracy
measured for this checkpoint (its README; bench/results/2026-12-02_cpu_default_checkpoint/), so a checkpoint that
stops retrieving fails. Then the same through the real server: the SDK's documents.ask and the openai package. And
the ability retrieval rests on, measured without the passkey format: copying a block read once
(bench/evals/copy_eval.py).
"""

from __future__ import annotations

import pytest

from lighthouse.checkpoint import default_checkpoint_dir, load_checkpoint
from lighthouse.train.passkey import passkey_accuracy


@pytest.fixture(scope="module")
def model():
    model, _ = load_checkpoint(default_checkpoint_dir(), load_tokenizer=False)
    return model


def _check(rec: dict, at_least: int) -> None:
    hits = round(rec["accuracy"] * rec["n"])
    assert hits >= at_least, f"{hits}/{rec['n']} passkeys retrieved: {rec['samples']}"


def test_dense_prefill_retrieves_the_passkey_at_every_depth_of_a_4k_document(model):
    rec = passkey_accuracy(model, [4096], prefills=("dense",), trials=1)[0]
    assert rec["lighthouse_layers"] == []
    _check(rec, at_least=5)


def test_sparse_prefill_runs_lighthouse_and_still_retrieves_from_an_8k_document(model):
    rec = passkey_accuracy(model, [8192], prefills=("sparse",), trials=1)[0]
    assert rec["lighthouse_layers"], "the sparse path did not run Lighthouse in any layer"
    assert set(rec["lighthouse_layers"]).isdisjoint(model.config.lighthouse.full_attn_layers)
    _check(rec, at_least=4)


@pytest.mark.parametrize("layout", ["pairs", "far"])
def test_a_random_block_read_once_costs_a_fraction_of_its_first_reading_the_second_time(model, layout):
    from bench.evals.copy_eval import copy_losses

    first, second = copy_losses(model, layout)  # measured: pairs 3.41 -> 0.005, far 3.97 -> 0.31 nats per character
    assert first > 3.0 and second < first / 4, f"{layout}: first occurrence {first:.3f}, second {second:.3f}"


# ---- through the real server: the SDK's documents.ask and the openai package's chat call (issue 16) ----------------

QUESTION = "What is the pass key?"


@pytest.fixture(scope="module")
def server(loopback_server, settings_for):
    with loopback_server(settings_for(default_checkpoint_dir(), served_model_name="lighthouse-default")) as s:
        yield s


def _document(seed: int, depth: float) -> tuple[str, str]:
    """An ~8K-token synthetic document with a pass key `depth` of the way in, without its question; and the key."""
    import random

    from lighthouse.train.synthetic import passkey_doc

    doc = passkey_doc(random.Random(seed), 8000, depth=depth)
    a, b = doc.answers[0]
    return doc.text[: doc.body_end], doc.text[a:b]


def test_the_bundled_checkpoint_states_its_512k_positions():
    import json

    cfg = json.loads((default_checkpoint_dir() / "config.json").read_text())
    assert cfg["max_position_embeddings"] >= 524288
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_scaling"]["factor"] == 32.0
    assert cfg["max_position_embeddings"] == cfg["rope_scaling"]["original_max_position_embeddings"] * 32


@pytest.mark.parametrize("seed, depth", [(1, 0.25), (2, 0.75)])
def test_documents_ask_answers_an_8k_passkey_question_through_the_server(server, seed, depth):
    from lighthouse_client import Client

    document, key = _document(seed, depth)
    with Client(base_url=server.url, timeout=300) as client:
        answer = client.documents.ask(document, QUESTION, max_tokens=24)
    assert key in answer.text, answer.text
    assert answer.usage.prompt_tokens > 8000  # the whole document went in: sparse-prefill length
    assert _sparse_prefill_tokens(server) > 8000  # through Lighthouse (the checkpoint's default prefill)


def _sparse_prefill_tokens(server) -> float:
    import re

    import httpx

    text = httpx.get(server.url + "/metrics", timeout=10).text
    return float(re.search(r'^lighthouse_prefill_tokens_total\{path="sparse"\} (\S+)$', text, re.M).group(1))


def test_the_openai_packages_chat_call_answers_the_same_question(server):
    openai = pytest.importorskip("openai")
    from lighthouse_client.documents import document_messages

    document, key = _document(1, 0.25)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    out = client.chat.completions.create(model="lighthouse-default", messages=document_messages(document, QUESTION),
                                         max_tokens=24, temperature=0)
    assert key in out.choices[0].message.content, out.choices[0].message.content
    assert out.usage.prompt_tokens > 8000
