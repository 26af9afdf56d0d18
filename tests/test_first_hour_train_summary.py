"""`lighthouse train` ends by saying what its answer accuracy measures, and why a short run reads 0."""

from __future__ import annotations

from lighthouse import cli
from lighthouse.train.config import train_preset
from lighthouse.train.evaluation import describe_answer_accuracy


def test_a_short_tiny_run_explains_its_zero_answer_accuracy(tmp_path, capsys):
    argv = ["train", "--preset", "tiny", "--max-steps", "4", "--seq-len", "512", "--batch-size", "4",
            "--micro-batch-size", "2", "--eval-samples", "2", "--device", "cpu", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert cli.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("answer accuracy 0.00: 0 of "), last
    assert "held-out synthetic sequences" in last and "every one of its tokens" in last
    assert "0 is expected after 4 steps" in last and "2026-11-28_cpu_tiny_passkey_echo" in last


def test_a_nonzero_or_missing_accuracy_is_described_without_the_excuse():
    cfg = train_preset("tiny")
    line = describe_answer_accuracy({"answer_acc": 0.5, "answers": 8, "answer_token_acc": 0.7, "step": 9}, cfg)
    assert line.startswith("answer accuracy 0.50: 4 of 8 answers exactly right (pass keys, looked-up values, "
                           "multi-hop answers in 8 held-out")
    assert "expected" not in line
    none = describe_answer_accuracy({"answer_acc": None, "answers": 0, "answer_token_acc": None, "step": 9}, cfg)
    assert none.startswith("answer accuracy n/a: the eval data has no synthetic questions")
