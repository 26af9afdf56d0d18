"""`lighthouse train`: the tiny preset end to end, the stage switch, exact resume, and torchrun (gloo) parity."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lighthouse.model.llama as llama_mod
from lighthouse.checkpoint import load_checkpoint
from lighthouse.engine.llm import greedy_generate
from lighthouse.train.config import train_preset
from lighthouse.train.metrics import read_metrics
from lighthouse.train.trainer import CALIBRATE_AFTER, Trainer


def small_cfg(out, **kw):
    """The tiny preset shrunk to a few seconds: 512-token sequences (Lighthouse active), 8 steps, 3 dense."""
    cfg = train_preset("tiny")
    cfg.out_dir, cfg.seq_len, cfg.batch_size, cfg.micro_batch_size = str(out), 512, 4, 2
    cfg.max_steps, cfg.warmup_steps, cfg.dense_tail_steps = 8, 2, 3
    cfg.eval_every, cfg.eval_samples, cfg.progress, cfg.device = 0, 2, False, "cpu"
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny30")
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(
        [sys.executable, "-m", "lighthouse.cli", "train", "--preset", "tiny", "--max-steps", "30", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, time.perf_counter() - t0, _children_cpu_s() - cpu0


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def test_tiny_preset_30_steps_runs_and_loss_falls(tiny_run):
    out, wall, cpu = tiny_run  # (its time is the machine's, not the test's business: README states it as measured)
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 31))
    first, last = losses[1], sum(losses[s] for s in range(26, 31)) / 5
    assert last < first - 1.0, f"loss {first:.3f} -> {last:.3f}"
    assert (out / "loss.png").stat().st_size > 10_000
    assert (out / "model.safetensors").exists() and (out / "checkpoints").is_dir()


def test_stage_switch_is_logged_and_phases_follow_it(tiny_run):
    out = tiny_run[0]
    records = read_metrics(out / "metrics.jsonl")
    switch = [r for r in records if r["type"] == "phase"]
    assert len(switch) == 1 and switch[0]["phase"] == "dense"
    s = switch[0]["step"]
    phases = {r["step"]: r["phase"] for r in records if r["type"] == "train"}
    assert all(p == ("lighthouse" if step <= s else "dense") for step, p in phases.items())
    assert all({"loss", "lr", "tokens_per_s"} <= set(r) for r in records if r["type"] == "train")
    assert [r for r in records if r["type"] == "eval"]


def test_trained_tiny_checkpoint_matches_transformers_logits_and_greedy_tokens(tiny_run):
    out = tiny_run[0]
    ours, tok = load_checkpoint(out)
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert AutoTokenizer.from_pretrained(out)("x")["input_ids"] == tok("x")["input_ids"]
    torch.manual_seed(0)
    ids = torch.randint(0, 262, (2, 200))
    with torch.no_grad():
        err = (ours(ids, dense=True, logits_to_keep=200).logits - hf(ids).logits).abs().max().item()
    assert err < 1e-4
    prompt = torch.tensor([tok("The pass key is 12345. Remember it. ")["input_ids"]])
    theirs = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(greedy_generate(ours, prompt, 32), theirs[:, prompt.shape[1]:])


def test_dense_tail_runs_no_lighthouse_layer(tmp_path, monkeypatch):
    trainer = Trainer(small_cfg(tmp_path, max_steps=5, dense_tail_steps=2))
    calls = []
    real_op = llama_mod.lighthouse_attention
    monkeypatch.setattr(llama_mod, "lighthouse_attention", lambda *a, **k: calls.append(trainer.step) or real_op(*a, **k))
    trainer.train()
    # 2 layers x (forward + checkpoint-free backward reuses forward) per micro-batch, only in steps 0..2
    assert calls and set(calls) == {0, 1, 2}
    assert [r["phase"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"] == ["lighthouse"] * 3 + ["dense"] * 2


def test_resuming_from_a_mid_run_checkpoint_continues_the_same_loss_trajectory(tmp_path):
    full = tmp_path / "full"
    Trainer(small_cfg(full)).train()
    cut = tmp_path / "cut"  # and its batches built ahead by worker processes (the full run builds them in-process)
    summary = Trainer(small_cfg(cut, save_every=3, stop_at_step=5, data_workers=2)).train()
    assert summary["stopped_early"] and summary["step"] == 5
    resumed = Trainer(small_cfg(cut, save_every=3, data_workers=2))
    assert resumed.step == 3  # the latest checkpoint, not where it stopped
    resumed.train()
    a, b = _losses(full), _losses(cut)
    assert sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    kept = sorted(p.name for p in (cut / "checkpoints").iterdir())
    assert kept == ["step_000006", "step_000008"]  # keep_last=2


def test_torchrun_two_processes_gloo_match_one_process_at_the_same_global_batch(tmp_path):
    args = ["--preset", "tiny", "--max-steps", "4", "--seq-len", "512", "--batch-size", "4", "--micro-batch-size", "2",
            "--warmup-steps", "1", "--dense-tail-steps", "1", "--eval-every", "0", "--eval-samples", "2",
            "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "lighthouse.train", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "lighthouse.train", *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-4 * max(1.0, a[s]), (s, a[s], b[s])
    w1, _ = load_checkpoint(tmp_path / "one", load_tokenizer=False)
    w2, _ = load_checkpoint(tmp_path / "two", load_tokenizer=False)
    for (n, p1), (_, p2) in zip(w1.named_parameters(), w2.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-3, atol=1e-4, msg=n)


def test_time_budget_trims_max_steps_once_and_records_it(tmp_path, monkeypatch):
    """The step times the budget is fitted to are injected (50 ms a step, 0.3 s spent), so the schedule is the same
    on any machine; the run itself is real."""
    cfg = small_cfg(tmp_path, max_steps=500, dense_tail_steps=None, dense_tail_fraction=0.25, time_budget_s=3.0,
                    batch_size=1, micro_batch_size=1)
    trainer = Trainer(cfg)
    fit = trainer._fit_time_budget
    monkeypatch.setattr(trainer, "_time_dense_step", lambda: 0.05)
    monkeypatch.setattr(trainer, "_fit_time_budget", lambda times, elapsed: fit([0.05] * len(times), 0.3))
    trainer.train()
    sched = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "schedule"]
    assert len(sched) == 1 and 6 <= sched[0]["max_steps"] < 500
    assert trainer.step == sched[0]["max_steps"]
    n = sched[0]["max_steps"]
    assert sched[0]["switch_step"] == max(CALIBRATE_AFTER, n - round(0.25 * n))
    state = json.loads((tmp_path / "checkpoints" / f"step_{trainer.step:06d}" / "trainer_state.json").read_text())
    assert state["max_steps"] == trainer.step


def test_a_new_model_can_declare_its_positions_and_rope_base(tmp_path):
    """--max-position-embeddings / --rope-theta: what a model meant for 512K-token documents is trained with; the
    saved checkpoint states them and its RoPE uses the base (the flags are refused where they cannot apply)."""
    from lighthouse.train.cli import add_arguments, config_from_args
    from lighthouse.train.config import ConfigError

    cfg = small_cfg(tmp_path, max_steps=2, dense_tail_steps=1, max_position_embeddings=524288, rope_theta=5e6)
    Trainer(cfg).train()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["max_position_embeddings"] == 524288 and saved["rope_theta"] == 5e6
    model, _ = load_checkpoint(tmp_path, device="cpu", dtype=torch.float32)
    D = model.config.head_dim
    want = 1.0 / 5e6 ** (torch.arange(0, D, 2, dtype=torch.float32) / D)
    torch.testing.assert_close(model.inv_freq.float(), want)
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--max-position-embeddings", "524288", "--rope-theta", "5e6", "--seq-len", "1024"])
    parsed = config_from_args(args)
    assert (parsed.max_position_embeddings, parsed.rope_theta) == (524288, 5e6)
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        small_cfg(tmp_path, max_position_embeddings=256).validate()
    with pytest.raises(ConfigError, match="rope_theta"):
        small_cfg(tmp_path, rope_theta=0.0).validate()


def test_the_time_budget_reserves_evals_for_the_steps_that_fit_not_for_the_step_cap(tmp_path, monkeypatch):
    """A long-sequence run (steps of seconds) with a generous --max-steps cap and frequent evals: the evals reserved
    are those of the steps that fit, so 100 s at ~1 s per step gives ~80 steps (it gave 1: the cap's 2,000 steps /
    eval_every 20 = 101 evals ate the budget, as a 256K run on the H200 found)."""
    cfg = small_cfg(tmp_path, max_steps=2000, dense_tail_steps=None, dense_tail_fraction=0.25, time_budget_s=100.0,
                    eval_every=20, batch_size=1, micro_batch_size=1)
    trainer = Trainer(cfg)
    monkeypatch.setattr(trainer, "_time_dense_step", lambda: 1.0)
    trainer._fit_time_budget([1.0] * 5, elapsed=0.0)
    # 100 s - 10% - one final eval (2 s) = 88 s, at 1 s per step + an eval (2 s) every 20 steps: 80 steps
    assert trainer.max_steps == 80 and trainer.switch_step == 60


def test_an_eval_in_the_lighthouse_stage_also_reports_the_model_with_every_layer_dense(tmp_path):
    """The Lighthouse stage's eval runs the questions through Lighthouse too; `dense_eval_loss` is the same samples
    with every layer dense (what serving's dense tail and dense prefill see), computed here by hand to compare."""
    import torch.nn.functional as F

    cfg = small_cfg(tmp_path, eval_samples=4)
    trainer = Trainer(cfg)
    rec = trainer.evaluate()  # step 0: the Lighthouse stage
    assert rec["phase"] == "lighthouse" and rec["dense_answer_acc"] is not None
    model = trainer.model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        b = trainer.eval_data.batch(list(range(4)))
        for dense, want in ((True, rec["dense_eval_loss"]), (False, rec["eval_loss"])):
            logits = model(b["input_ids"], dense=dense, logits_to_keep=b["input_ids"].shape[1]).logits[:, :-1]
            target = b["labels"][:, 1:]
            total = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="sum").item()
            n = int((target != -100).sum())
            assert abs(total / n - want) < 1e-5, (dense, total / n, want)
    assert abs(rec["dense_eval_loss"] - rec["eval_loss"]) > 1e-6  # Lighthouse really ran in the phase's own pass
    trainer.step = trainer.switch_step  # the dense tail: one pass, no dense_* fields
    assert "dense_eval_loss" not in trainer.evaluate()
