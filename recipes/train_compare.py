"""Training quality and speed at equal tokens: dense from scratch vs Lighthouse + dense tail.

    python -m recipes.train_compare --out DIR --time-budget-s 100          # CUDA: h200 model at 98,304 tokens
    python -m recipes.train_compare --out DIR --tiny                       # CPU dry run, a couple of minutes

Both runs are `python -m lighthouse.train` (the product's own trainer) in a subprocess, with the same model,
seed, data, batches, LR schedule, step count and eval set; they differ only in the dense tail:
  dense       --dense-tail-steps = --max-steps: every step and every eval runs dense causal attention in every layer
              (the trainer's dense path: SDPA, cuDNN first on CUDA). (Putting every layer in --full-attn-layers
              is refused by the trainer, and would not be "dense from scratch" by its own switch anyway.)
  lighthouse  the Lighthouse stage, then round(F x steps) dense steps (--dense-tail-fraction F, default 0.2), on the same
              optimizer state (the paper's recipe; it uses 6k of 16k steps).
Equal tokens: --max-steps or --tokens fixes the step count; otherwise a short dense probe run times a dense step
and sets the steps so the dense run (the slower one) fits --time-budget-s, and Lighthouse runs the same steps.

Tokens/s is end to end over training steps, as the paper reports: the trainer's per-step wall time (the next
batch from the data loader, forward, backward, clipping, the AdamW step, the loss sync), summed; evals, checkpoint
saves, process startup and the first --warmup-exclude steps of each stage (kernel compile / autotune / allocator
warm-up) are excluded. The per-run wall times (everything) are reported as well.

Writes DIR/training.json, DIR/training_loss.png (eval loss vs training tokens, both runs), DIR/{probe,dense,
lighthouse}/ (each run's checkpoint, metrics.jsonl, loss.png, train.log).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from lighthouse.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]  # the trainer's subprocesses run from the repository root

PAPER = {"source": "arXiv 2605.06554 Table 2 (98K, 8xB200, 50.3B tokens, training loss at step 16k)",
         "end_to_end_speedup": "1.40-1.69x", "loss_lighthouse_tail": "0.6825-0.6991", "loss_dense": 0.7237}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: tiny model, seq 2048, 12 steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--model", help="model preset: tiny | default | h200 (default: h200, ~25M params; tiny with --tiny)")
    p.add_argument("--seq-len", type=int, help="default 98304 (2048 with --tiny)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default 2; 2 with --tiny)")
    p.add_argument("--micro-batch-size", type=int, help="default 1")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, help="optimizer steps per run")
    steps.add_argument("--tokens", type=int, help="training tokens per run (rounded up to whole steps)")
    p.add_argument("--time-budget-s", type=float,
                   help="seconds of training + evals for the dense run (Lighthouse runs the same steps, faster) when "
                        "neither --max-steps nor --tokens is given; a 5-step dense probe run sets the steps "
                        "(default 100; with --tiny, default 12 steps instead)")
    p.add_argument("--dense-tail-fraction", type=float, default=0.2, help="share of the Lighthouse run's steps dense")
    p.add_argument("--levels", type=int, help="Lighthouse levels (default 3; tiny: the preset's)")
    p.add_argument("--pooling-factor", type=int, help="default 4")
    p.add_argument("--topk", type=int, help="default 2048 (the paper's L3 p4 k2048 norm row; valid at 64K and 96K)")
    p.add_argument("--full-attn-layers", help="layers dense in both stages, e.g. 0,7 (default: the preset's)")
    p.add_argument("--data", nargs="+", default=["stdlib"], help="text sources for the trainer (default: stdlib)")
    p.add_argument("--synthetic-fraction", type=float, default=0.5, help="share of synthetic task sequences")
    p.add_argument("--lr", type=float, help="peak LR, constant after warmup as in the paper (default 1.5e-3)")
    p.add_argument("--warmup-steps", type=int, help="default 10 (2 with --tiny)")
    p.add_argument("--evals", type=int, default=8, help="eval points per run (besides the final one)")
    p.add_argument("--eval-samples", type=int, help="held-out sequences per eval (default 4; 2 with --tiny)")
    p.add_argument("--warmup-exclude", type=int, default=2, help="first steps of each stage left out of tokens/s")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in both runs")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on --tiny."""
    tiny = a.tiny
    a.device = "cpu" if tiny and a.device == "auto" else a.device
    a.model = a.model or ("tiny" if tiny else "h200")
    a.seq_len = a.seq_len or (2048 if tiny else 98304)
    a.batch_size = a.batch_size or 2
    a.micro_batch_size = a.micro_batch_size or 1
    a.lr = a.lr or (3e-3 if tiny else 1.5e-3)
    a.warmup_steps = 2 if tiny and a.warmup_steps is None else (a.warmup_steps if a.warmup_steps is not None else 10)
    a.eval_samples = a.eval_samples or (2 if tiny else 4)
    if a.max_steps is None and a.tokens is None and a.time_budget_s is None:
        if tiny:
            a.max_steps = 12
        else:
            a.time_budget_s = 100.0
    if not tiny:
        a.levels, a.pooling_factor, a.topk = a.levels or 3, a.pooling_factor or 4, a.topk or 2048
    return a


def trainer_flags(a: argparse.Namespace, out: Path, max_steps: int, tail_steps: int, eval_every: int) -> list[str]:
    """`lighthouse train` flags shared by every run; only out, steps, tail and eval cadence differ."""
    flags = ["--preset", "tiny", "--model", a.model, "--out", str(out), "--no-resume", "--no-progress",
             "--seq-len", str(a.seq_len), "--batch-size", str(a.batch_size), "--micro-batch-size",
             str(a.micro_batch_size), "--max-steps", str(max_steps), "--dense-tail-steps", str(tail_steps),
             "--lr", str(a.lr), "--decay", "constant", "--warmup-steps", str(a.warmup_steps), "--no-curriculum",
             "--data", *a.data, "--synthetic-fraction", str(a.synthetic_fraction), "--answer-loss-weight", "1",
             "--eval-every", str(eval_every), "--eval-samples", str(a.eval_samples), "--log-every", "1",
             "--save-every", "0", "--save-dtype", "bf16", "--seed", str(a.seed), "--device", a.device,
             "--time-budget-s", "0"]
    for flag, value in (("--levels", a.levels), ("--pooling-factor", a.pooling_factor), ("--topk", a.topk),
                        ("--full-attn-layers", a.full_attn_layers)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + (["--compile"] if a.compile else [])


def run_trainer(flags: list[str], log_path: Path) -> float:
    """Run the trainer in a subprocess, echoing and logging its output; returns its wall time."""
    cmd = [sys.executable, "-u", "-m", "lighthouse.train", *flags]
    print("$ " + " ".join(cmd[1:]), flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    if rc:
        sys.exit(f"train_compare: the trainer failed (exit {rc}); see {log_path}")
    return time.perf_counter() - t0


def step_records(metrics: list[dict]) -> list[dict]:
    """Train records by step, each with its own tokens and wall time `dt` (the log holds cumulative tokens)."""
    train = sorted({r["step"]: r for r in metrics if r["type"] == "train"}.values(), key=lambda r: r["step"])
    out, prev = [], 0
    for r in train:
        tokens = r["tokens"] - prev
        prev = r["tokens"]
        out.append({**r, "step_tokens": tokens, "dt": tokens / r["tokens_per_s"]})
    return out


def stage_speed(steps: list[dict], warmup_exclude: int) -> dict:
    """End-to-end tokens/s of each stage and of the whole run, without each stage's first warm-up steps."""
    stages: dict[str, list[dict]] = {}
    for r in steps:
        stages.setdefault(r["phase"], []).append(r)
    res, counted = {}, []
    for phase, rs in stages.items():
        keep = rs[min(warmup_exclude, len(rs) - 1):]  # at least one step counts
        counted += keep
        res[phase] = {"steps": len(rs), "steps_timed": len(keep), "tokens_timed": sum(r["step_tokens"] for r in keep),
                      "time_s": sum(r["dt"] for r in keep)}
        res[phase]["tokens_per_s"] = res[phase]["tokens_timed"] / res[phase]["time_s"]
    total_t = sum(r["dt"] for r in counted)
    res["all"] = {"steps_timed": len(counted), "tokens_timed": sum(r["step_tokens"] for r in counted),
                  "time_s": total_t, "tokens_per_s": sum(r["step_tokens"] for r in counted) / total_t}
    return res


def eval_curve(metrics: list[dict], steps: list[dict]) -> list[dict]:
    """Eval points with the training tokens seen at their step (final eval included)."""
    cum = {r["step"]: r["tokens"] for r in steps}
    evals = sorted({r["step"]: r for r in metrics if r["type"] == "eval"}.values(), key=lambda r: r["step"])
    return [{"step": r["step"], "tokens": cum.get(r["step"], 0), "phase": r["phase"], "eval_loss": r["eval_loss"],
             "answer_acc": r["answer_acc"], "dense_eval_loss": r.get("dense_eval_loss")} for r in evals]


def probe_steps(a: argparse.Namespace, out: Path) -> tuple[int, dict]:
    """Steps that fit --time-budget-s for the dense run (training + evals, not startup), from a 5-step dense probe
    run (the median of its steps 3-5)."""
    n = 5
    wall = run_trainer(trainer_flags(a, out / "probe", n, n, 0) + ["--eval-samples", "1"], out / "probe" / "train.log")
    steps = step_records(read_metrics(out / "probe" / "metrics.jsonl"))
    times = sorted(r["dt"] for r in steps[2:])
    t_step = times[len(times) // 2]
    # evals: eval_samples forward passes each, a forward ~1/3 of a sequence's share of a training step
    eval_s = (a.evals + 1) * a.eval_samples * t_step / (3 * a.batch_size)
    fit = max(2, int(0.95 * (a.time_budget_s - eval_s) / t_step))
    return fit, {"probe_steps": n, "dense_step_s": t_step, "probe_wall_s": wall, "time_budget_s": a.time_budget_s,
                 "eval_estimate_s": eval_s}


def model_summary(run_dir: Path) -> dict:
    from safetensors import safe_open

    cfg = json.loads((run_dir / "config.json").read_text())
    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size", "rope_theta", "max_position_embeddings", "lighthouse")
    return {"params": params, "layers": cfg["num_hidden_layers"], **{k: cfg.get(k) for k in keys}}


def device_summary(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__}
    if device != "cpu" and torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        import platform

        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def plot(curves: dict[str, list[dict]], train: dict[str, list[dict]], switch_tokens: int | None, png: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = {"dense": "tab:orange", "lighthouse": "tab:blue"}
    labels = {"dense": "dense from scratch", "lighthouse": "Lighthouse + dense tail"}
    for run, pts in curves.items():
        c = colors[run]
        ax.plot([r["tokens"] for r in train[run]], [r["loss"] for r in train[run]], color=c, lw=0.6, alpha=0.3)
        ax.plot([p["tokens"] for p in pts], [p["eval_loss"] for p in pts], "-", color=c, lw=1.2,
                label=f"{labels[run]}: eval loss (final {pts[-1]['eval_loss']:.4f})")
        dense_pts = [p for p in pts if p["phase"] == "dense"]
        sparse_pts = [p for p in pts if p["phase"] == "lighthouse"]
        ax.plot([p["tokens"] for p in dense_pts], [p["eval_loss"] for p in dense_pts], "o", color=c, ms=5)
        if sparse_pts:
            ax.plot([p["tokens"] for p in sparse_pts], [p["eval_loss"] for p in sparse_pts], "o", mfc="white",
                    color=c, ms=5, label="eval in the Lighthouse stage (sparse forward)")
        dense_eval = [p for p in sparse_pts if p.get("dense_eval_loss") is not None]
        if dense_eval:  # the same evals with every layer dense, as the dense run is evaluated
            ax.plot([p["tokens"] for p in dense_eval], [p["dense_eval_loss"] for p in dense_eval], "x", color=c, ms=6,
                    label="eval in the Lighthouse stage, every layer dense")
    if switch_tokens is not None:
        ax.axvline(switch_tokens, color="gray", ls=":", label="dense tail starts")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss (nats / byte); faint: train loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def summarize(a: argparse.Namespace, out: Path, max_steps: int, walls: dict, probe: dict | None) -> dict:
    runs = {}
    for run in ("dense", "lighthouse"):
        metrics = read_metrics(out / run / "metrics.jsonl")
        steps = step_records(metrics)
        runs[run] = {"steps": steps, "curve": eval_curve(metrics, steps), "speed": stage_speed(steps, a.warmup_exclude)}
    d, lh = runs["dense"], runs["lighthouse"]
    tokens = d["steps"][-1]["tokens"]
    assert tokens == lh["steps"][-1]["tokens"], "the runs saw different token counts"
    switch = next((r["step"] for r in lh["steps"] if r["phase"] == "dense"), None)
    tps_lh, tps_d = lh["speed"]["all"]["tokens_per_s"], d["speed"]["all"]["tokens_per_s"]
    lh_stage = lh["speed"].get("lighthouse", {}).get("tokens_per_s")
    result = {
        "tokens_per_s_lighthouse": tps_lh, "tokens_per_s_dense": tps_d,
        "final_eval_loss_lighthouse_tail": lh["curve"][-1]["eval_loss"], "final_eval_loss_dense": d["curve"][-1]["eval_loss"],
        "tokens": tokens, "seq_len": a.seq_len,
        "ratio": tps_lh / tps_d, "ratio_lighthouse_stage": (lh_stage / tps_d) if lh_stage else None,
        "tokens_per_s_lighthouse_stage": lh_stage,
        "tokens_per_s_dense_tail": lh["speed"].get("dense", {}).get("tokens_per_s"),
        **device_summary(a.device), "model": {"preset": a.model, **model_summary(out / "lighthouse")},
        "wall_s": walls,
        "schedule": {"max_steps": max_steps, "batch_size": a.batch_size, "micro_batch_size": a.micro_batch_size,
                     "tokens_per_step": tokens // max_steps, "lighthouse_stage_steps": (switch - 1) if switch else max_steps,
                     "dense_tail_steps": (max_steps - switch + 1) if switch else 0, "dense_tail_fraction": a.dense_tail_fraction,
                     "lr": a.lr, "decay": "constant", "warmup_steps": a.warmup_steps, "seed": a.seed,
                     "data": a.data, "synthetic_fraction": a.synthetic_fraction, "compile": a.compile},
        "probe": probe,
        "timing": (f"end to end over training steps: the trainer's per-step wall time (data loader, forward, backward, "
                   f"clip, AdamW, loss sync) summed; excluded: evals, checkpoint saves, process startup, and the first "
                   f"{a.warmup_exclude} steps of each stage (compile/autotune warm-up). tokens_per_s_lighthouse is over "
                   f"both stages of the Lighthouse run; ratio = tokens_per_s_lighthouse / tokens_per_s_dense; "
                   f"ratio_lighthouse_stage uses the Lighthouse stage alone (the paper's tok/s column)"),
        "eval": (f"{a.eval_samples} held-out sequences (same for both runs), loss in nats per byte token; the trainer "
                 f"evaluates in the current stage's mode, so Lighthouse-stage points are a sparse forward and the "
                 f"final points of both runs are dense"),
        "speed_detail": {"dense": d["speed"], "lighthouse": lh["speed"]},
        "eval_curves": {"dense": d["curve"], "lighthouse": lh["curve"]},
        "paper": PAPER,
    }
    title = (f"{a.model} ({result['model']['params'] / 1e6:.1f}M) at {a.seq_len:,} tokens, {tokens:,} tokens per run, "
             f"{result['device']}\nLighthouse + tail / dense tokens/s: {result['ratio']:.2f}x")
    cum = {r["step"]: r["tokens"] for r in lh["steps"]}
    plot({"dense": d["curve"], "lighthouse": lh["curve"]}, {"dense": d["steps"], "lighthouse": lh["steps"]},
         cum.get(switch - 1, 0) if switch else None, out / "training_loss.png", title)
    return result


def main(argv=None) -> int:
    a = resolve(parse_args(argv))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = None
    if a.max_steps:
        max_steps = a.max_steps
    elif a.tokens:
        max_steps = math.ceil(a.tokens / (a.batch_size * (a.seq_len - 1)))
    else:
        max_steps, probe = probe_steps(a, out)
        print(f"[train_compare] dense step {probe['dense_step_s']:.3f}s -> {max_steps} steps per run", flush=True)
    eval_every = max(1, max_steps // a.evals)
    walls = {}
    # dense: every step in the tail; Lighthouse: at least one dense step, the final eval dense
    tail = max(1, round(max_steps * a.dense_tail_fraction)) if a.dense_tail_fraction > 0 else 0
    for run, tail_steps in (("dense", max_steps), ("lighthouse", tail)):
        walls[run] = run_trainer(trainer_flags(a, out / run, max_steps, tail_steps, eval_every), out / run / "train.log")
    result = summarize(a, out, max_steps, walls, probe)
    (out / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[train_compare] tokens/s: lighthouse+tail {result['tokens_per_s_lighthouse']:,.0f}, dense "
          f"{result['tokens_per_s_dense']:,.0f} ({result['ratio']:.2f}x); final eval loss: lighthouse+tail "
          f"{result['final_eval_loss_lighthouse_tail']:.4f}, dense {result['final_eval_loss_dense']:.4f}; "
          f"{out / 'training.json'}, {out / 'training_loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
