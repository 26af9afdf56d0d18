"""The bundled default checkpoint retrieves 5-digit passkeys from long synthetic documents (issue #3's bar), on the
CPU, under dense prefill and under sparse prefill with its Lighthouse layers really running the op.

The prompts are bench/passkey_eval.py's (seeded, needle at 5 depths); the thresholds sit below the accuracy
measured for this checkpoint (bench/results/passkey_default.json), so a checkpoint that stops retrieving fails.
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
