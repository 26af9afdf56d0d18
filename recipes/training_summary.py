"""training.json for a run of the SmolLM2 512K recipe: per stage (in the config's order) its sequence length,
steps, tokens, phase, final train loss, last eval (Lighthouse and all-dense loss, answer accuracy) and mean
tokens/s, read from RUN_DIR/<stage>/metrics.jsonl; plus the Lighthouse-vs-dense training throughput at 64K and
128K measured in one process (bench/experiments/2026-12-07_smollm2_stage1/profile_train_step.py's JSON).

    python -m recipes.training_summary RUN_DIR --out training.json [--throughput train_profile.json]
                                       [--config recipes/smollm2_512k.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from recipes.smollm2_512k import DEFAULT_CONFIG


def stage_summary(folder: Path, stage: dict) -> dict | None:
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("type") == "train"]
    evals = [r for r in rows if r.get("type") == "eval"]
    last = train[-1] if train else {}
    out = {"stage": folder.name, "seq_len": stage["seq_len"], "batch_size": stage["batch_size"],
           "dense": stage["dense"], "steps_planned": stage["steps"], "steps": last.get("step", 0),
           "finished": (folder / "adapter_config.json").is_file(), "tokens": last.get("tokens", 0),
           "final_train_loss": last.get("loss"),
           "tokens_per_s_mean": round(statistics.mean(r["tokens_per_s"] for r in train)) if train else None}
    if evals:
        e = evals[-1]
        out["eval"] = {k: e[k] for k in ("step", "eval_loss", "dense_eval_loss", "answer_acc", "answer_token_acc",
                                         "answers") if k in e}
    return out


def throughput(profile: dict) -> dict:
    """{length: {lighthouse_tokens_per_s, dense_tokens_per_s, speedup}} from a profile_train_step.py JSON (its
    first variant), with its device and torch."""
    out: dict = {"device": profile.get("device"), "torch": profile.get("torch")}
    for key, val in profile.items():
        parts = key.split("_")
        if len(parts) == 3 and parts[2] == "lighthouse" and isinstance(val, dict):
            dense = profile.get(f"{parts[0]}_{parts[1]}_dense")
            if isinstance(dense, dict):
                out[parts[1]] = {"lighthouse_tokens_per_s": val["tokens_per_s"],
                                 "dense_tokens_per_s": dense["tokens_per_s"],
                                 "speedup": round(dense["s_per_step"] / val["s_per_step"], 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.training_summary", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--throughput", type=Path, help="profile_train_step.py's train_profile.json")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    a = ap.parse_args(argv)
    cfg = json.loads(a.config.read_text())
    stages = []
    for stage in cfg["stages"]:
        for folder in sorted(a.run_dir.glob(f"{stage['name']}*")):
            s = stage_summary(folder, stage)
            if s is not None:
                stages.append(s)
    if not stages:
        ap.error(f"no stage folders with metrics.jsonl under {a.run_dir}")
    result = {"recipe": str(a.config), "stages": stages, "tokens_total": sum(s["tokens"] for s in stages)}
    if a.throughput:
        result["throughput"] = throughput(json.loads(a.throughput.read_text()))
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for s in stages:
        print(f"{s['stage']:22s} {s['seq_len']:>7d} x {s['batch_size']}  steps {s['steps']}/{s['steps_planned']}  "
              f"loss {s['final_train_loss']}  {s['tokens_per_s_mean']} tokens/s")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
