"""The JSONL metrics log and the loss-curve PNG.

Records (one JSON object per line, each with "type"):
  train     step, phase ("lighthouse" | "dense"), loss, lr, grad_norm, tokens, tokens_per_s, time_s
  eval      step, phase, eval_loss, answer_acc (teacher-forced: every token of an answer correct)
  phase     step, phase: the stage switch (Lighthouse -> dense tail)
  schedule  max_steps, switch_step (and why they were chosen)
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", -1) <= step or r["type"] == "schedule"]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)  # a kill while rewriting leaves the old log, never half of it

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records; a last line cut short (the process was killed while appending it) is skipped."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records


def plot_loss(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = {r["step"]: r for r in records if r["type"] == "train"}  # last write per step wins
    evals = {r["step"]: r for r in records if r["type"] == "eval"}
    switch = [r["step"] for r in records if r["type"] == "phase" and r["phase"] == "dense"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for phase, color in (("lighthouse", "tab:blue"), ("dense", "tab:orange")):
        pts = sorted((s, r["loss"]) for s, r in train.items() if r["phase"] == phase)
        if pts:
            ax.plot(*zip(*pts), color=color, lw=1, label=f"train loss ({phase} stage)")
    if evals:
        pts = sorted((s, r["eval_loss"]) for s, r in evals.items())
        ax.plot(*zip(*pts), "k.--", ms=6, lw=0.8, label="held-out eval loss")
        dense = sorted((s, r["dense_eval_loss"]) for s, r in evals.items() if "dense_eval_loss" in r)
        if dense:  # the Lighthouse stage's evals with every layer dense (Trainer.evaluate)
            ax.plot(*zip(*dense), "x:", color="tab:green", ms=6, lw=0.8, label="held-out eval loss, every layer dense")
    for s in switch[-1:]:
        ax.axvline(s, color="gray", ls=":", label=f"dense tail starts (step {s})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_yscale("log")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)
