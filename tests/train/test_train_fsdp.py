"""`lighthouse train --fsdp`: FSDP2 over 2 gloo processes trains the tiny model exactly as one process does, its
sharded (DCP) checkpoints resume identically (with 2 ranks, and resharded into 1), and the exported model loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lighthouse.checkpoint import load_checkpoint, verify_checkpoint
from lighthouse.train.cli import config_from_args
from lighthouse.train.metrics import read_metrics
from lighthouse.train.trainer import Trainer

ARGS = ["--preset", "tiny", "--max-steps", "4", "--seq-len", "512", "--batch-size", "4", "--micro-batch-size", "2",
        "--warmup-steps", "1", "--dense-tail-steps", "1", "--eval-every", "0", "--eval-samples", "2",
        "--device", "cpu", "--no-progress"]


def _losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"}


def _cfg(*extra: str):
    import argparse

    from lighthouse.train.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args([*ARGS, *extra]))


def _torchrun(*extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "lighthouse.train", *ARGS, *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process without FSDP, and 2 FSDP ranks (activation checkpointing on) saving every 2 steps."""
    root = tmp_path_factory.mktemp("fsdp")
    Trainer(_cfg("--out", str(root / "one"))).train()
    _torchrun("--fsdp", "--activation-checkpointing", "--save-every", "2", "--keep-last", "3",
              "--out", str(root / "two"))
    return root / "one", root / "two"


def _assert_same_weights(a, b, atol):
    wa, _ = load_checkpoint(a, load_tokenizer=False)
    wb, _ = load_checkpoint(b, load_tokenizer=False)
    for (name, pa), (_, pb) in zip(wa.named_parameters(), wb.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=atol, msg=name)


def test_two_fsdp_ranks_match_one_process_losses_and_weights_at_the_same_global_batch(runs):
    one, two = runs
    a, b = _losses(one), _losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])
    _assert_same_weights(one, two, atol=1e-4)


def test_fsdp_training_checkpoints_are_sharded_dcp_and_the_export_is_an_hf_directory(runs):
    _, two = runs
    steps = sorted(p.name for p in (two / "checkpoints").iterdir())
    assert steps == ["step_000002", "step_000004"]
    step = two / "checkpoints" / "step_000002"
    assert sorted(p.name for p in step.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert (step / ".metadata").is_file()
    assert json.loads((step / "trainer_state.json").read_text())["format"] == "dcp"
    verify_checkpoint(two, require_tokenizer=True)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(two)
    ours, _ = load_checkpoint(two, load_tokenizer=False)
    torch.testing.assert_close(hf.model.embed_tokens.weight, ours.model.embed_tokens.weight, rtol=0, atol=0)


def test_resuming_from_a_dcp_checkpoint_with_two_ranks_continues_identically(runs, tmp_path):
    _, two = runs
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")  # as if killed after step 3: the latest is step 2
    _torchrun("--fsdp", "--activation-checkpointing", "--save-every", "2", "--keep-last", "3", "--out", str(cut))
    a, b = _losses(two), _losses(cut)
    assert sorted(b) == [1, 2, 3, 4]
    for s in (3, 4):
        assert abs(a[s] - b[s]) < 1e-6, (s, a[s], b[s])
    _assert_same_weights(two, cut, atol=1e-6)


@pytest.mark.parametrize("flags", [["--fsdp"], []], ids=["fsdp_one_rank", "plain"])
def test_a_checkpoint_written_by_two_ranks_resumes_resharded_in_one_process(runs, tmp_path, flags):
    one, two = runs
    cut = tmp_path / "cut1"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    trainer = Trainer(_cfg(*flags, "--save-every", "2", "--out", str(cut)))  # --fsdp: a one-rank group, no torchrun
    assert trainer.step == 2
    trainer.train()
    a, b = _losses(one), _losses(cut)
    for s in (3, 4):
        assert abs(a[s] - b[s]) < 1e-4, (s, a[s], b[s])
    _assert_same_weights(one, cut, atol=1e-4)


def test_fsdp_flags_parse_and_a_ddp_checkpoint_is_not_resumed_as_fsdp(tmp_path):
    assert _cfg("--fsdp").parallel == _cfg("--parallel", "fsdp").parallel == "fsdp"
    assert _cfg().parallel == "ddp"
    from lighthouse.train.config import ConfigError

    Trainer(_cfg("--max-steps", "1", "--out", str(tmp_path))).train()  # its final state: safetensors
    try:
        with pytest.raises(ConfigError, match="DDP path"):
            Trainer(_cfg("--max-steps", "2", "--fsdp", "--out", str(tmp_path)))
    finally:
        if torch.distributed.is_initialized():  # the one-rank group the refused trainer made
            torch.distributed.destroy_process_group()
