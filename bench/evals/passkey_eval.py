"""Passkey retrieval accuracy of a checkpoint under dense vs sparse (Lighthouse) prefill, at several contexts.

    python -m bench.evals.passkey_eval [--checkpoint DIR] [--contexts 2048 4096 8192 16384] [--out FILE]

Prints a line as each (context, prefill, depth) finishes (the default run takes about 9 minutes on a 2-core CPU),
then a table, and writes a JSON with one record per (context, prefill). --out defaults to a new file
bench/results/<date>_<device>_passkey/passkey.json; an existing file is never overwritten without --overwrite
(the bundled checkpoint's table is in its README, measured by bench/evals/quality_bench.py). Prompts come from the trainer's
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


def default_out(device: str) -> Path:
    """bench/results/<date>_<device>_passkey/passkey.json, e.g. 2026-12-03_cpu_passkey or 2026-12-03_h200_passkey."""
    tag = "cpu"
    if device.startswith("cuda"):
        tag = torch.cuda.get_device_name(device).lower().removeprefix("nvidia ").split()[0]
    return Path("bench/results") / f"{time.strftime('%Y-%m-%d')}_{tag}_passkey" / "passkey.json"


def measure_cell(model, args, context: int, prefill: str) -> dict:
    """One (context, prefill) record, measured depth by depth so that progress shows (a 16K cell takes minutes
    on a CPU). Same prompts and the same record as one passkey_accuracy call over all depths."""
    parts = []
    for depth in args.depths:
        try:
            (part,) = passkey_accuracy(
                model, [context], prefills=[prefill], depths=[depth], trials=args.trials,
                dense_tail_tokens=args.dense_tail_tokens, batch_size=args.batch_size, seed=args.seed,
                filler=args.filler,
            )
        except ValueError as exc:  # the engine refuses the request (e.g. prompt + answer past the model's length)
            print(f"{context:>8} {prefill:>7}: not measured: {exc}", flush=True)
            return {"context": context, "prefill": prefill, "error": str(exc)}
        parts.append(part)
        hits = round(part["accuracy"] * part["n"])
        print(f"{context:>8} {prefill:>7} depth {depth:.2f}: {hits}/{part['n']} keys ({part['seconds']:.1f} s)",
              flush=True)
    record = dict(parts[0])
    record["n"] = sum(r["n"] for r in parts)
    record["accuracy"] = sum(r["accuracy"] * r["n"] for r in parts) / record["n"]
    record["by_depth"] = {d: a for r in parts for d, a in r["by_depth"].items()}
    record["seconds"] = sum(r["seconds"] for r in parts)
    record["samples"] = [x for r in parts for x in r["samples"]]
    return record


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
    p.add_argument("--out", default=None, help="JSON file (default: bench/results/<date>_<device>_passkey/passkey.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. which checkpoint this is)")
    args = p.parse_args(argv)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    out = Path(args.out or default_out(args.device))
    if out.exists() and not args.overwrite:
        p.error(f"{out} exists: pass --overwrite to replace it, or another --out")
    model, _ = load_checkpoint(args.checkpoint, device=args.device, dtype=dtype, load_tokenizer=False)
    cells = len(args.contexts) * len(args.prefill) * len(args.depths)
    print(f"{cells} measurements of {args.trials} prompts each on {device_name}; results go to {out}", flush=True)
    t0 = time.perf_counter()
    records = [measure_cell(model, args, n, prefill) for n in args.contexts for prefill in args.prefill]
    result = {
        "checkpoint": str(args.checkpoint),
        "note": args.note,
        "lighthouse": model.config.lighthouse.to_dict(),
        "device": device_name,
        "dtype": str(dtype).removeprefix("torch."),
        "filler": args.filler, "seed": args.seed, "depths": args.depths, "trials": args.trials,
        "seconds": time.perf_counter() - t0,
        "results": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'context':>8} {'prefill':>7} {'accuracy':>8}  by depth")
    for r in records:
        if "error" in r:
            print(f"{r['context']:>8} {r['prefill']:>7} {'-':>8}  {r['error'][:90]}")
            continue
        depth = " ".join(f"{float(d):.2f}:{a:.2f}" for d, a in r["by_depth"].items())
        print(f"{r['context']:>8} {r['prefill']:>7} {r['accuracy']:>8.2f}  {depth}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
