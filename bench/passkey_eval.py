"""Passkey retrieval accuracy of a checkpoint under dense vs sparse (Lighthouse) prefill, at several contexts.

    python bench/passkey_eval.py --checkpoint DIR --contexts 2048 4096 8192 16384 --out bench/results/passkey.json

Writes a JSON with one record per (context, prefill) and prints a table. Prompts come from the trainer's
synthetic generator (lighthouse.train.synthetic.passkey_doc) with a fixed seed, so runs are comparable.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lighthouse.checkpoint import default_checkpoint_dir, load_checkpoint
from lighthouse.engine.options import PREFILL_MODES
from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_accuracy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(default_checkpoint_dir()))
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096, 8192, 16384])
    p.add_argument("--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS))
    p.add_argument("--trials", type=int, default=4, help="prompts per (context, depth)")
    p.add_argument("--prefill", nargs="+", default=["dense", "sparse"], choices=PREFILL_MODES)
    p.add_argument("--dense-tail-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--filler", default="repeat", choices=["repeat", "sentences", "alnum"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/passkey_default.json")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. which checkpoint this is)")
    args = p.parse_args(argv)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, _ = load_checkpoint(args.checkpoint, device=args.device, dtype=dtype, load_tokenizer=False)
    t0 = time.perf_counter()
    records = passkey_accuracy(
        model, args.contexts, prefills=args.prefill, depths=args.depths, trials=args.trials,
        dense_tail_tokens=args.dense_tail_tokens, batch_size=args.batch_size, seed=args.seed, filler=args.filler,
    )
    result = {
        "checkpoint": str(args.checkpoint),
        "note": args.note,
        "lighthouse": model.config.lighthouse.to_dict(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "filler": args.filler, "seed": args.seed, "depths": args.depths, "trials": args.trials,
        "seconds": time.perf_counter() - t0,
        "results": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'context':>8} {'prefill':>7} {'accuracy':>8}  by depth")
    for r in records:
        depth = " ".join(f"{float(d):.2f}:{a:.2f}" for d, a in r["by_depth"].items())
        print(f"{r['context']:>8} {r['prefill']:>7} {r['accuracy']:>8.2f}  {depth}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
