"""bench/perf/documents_bench.py's CPU dry run (--tiny) writes every field the issue names, and its figures hold
what they claim: the restored document answers a question without a prefill (checked inside), and two concurrent
questions on a new document prefill it once."""

from __future__ import annotations

import json

import pytest

from bench.perf import documents_bench


@pytest.mark.timeout(300)
def test_the_tiny_dry_run_writes_every_field(tmp_path):
    assert documents_bench.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "documents_bench.json").read_text())
    assert res["errors"] == {}
    for key in ("restore_512k_full_s", "restore_512k_compact_s", "cold_512k_s"):
        assert res[key] > 0, key
    assert res["device"] == "cpu" and res["torch"]
    c = res["concurrent_two_questions"]
    assert res["concurrent_two_questions_prefilled_tokens"] == c["one_prefill_tokens"] < c["two_prefills_tokens"]
    assert res["restore_512k_full"]["load_s"] + res["restore_512k_full"]["to_device_s"] == pytest.approx(
        res["restore_512k_full_s"], abs=2e-3)
    assert not (tmp_path / "store").exists()  # the default store is removed after the run
