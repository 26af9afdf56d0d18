"""Which layers may run Lighthouse at prefill without losing passkey retrieval?

    python -m bench.evals.sparse_layers_eval --checkpoint DIR --contexts 8192 16384 --layer-sets 1,2,3,4 3,4 4 --trials 2

For each set of layers (the others run dense, whatever the checkpoint's `full_attn_layers` say), the passkey
evaluation of bench/evals/passkey_eval.py runs with sparse prefill (the last `--dense-tail-tokens` prompt tokens dense).
Prints one line per (layer set, context) and writes all samples to --out. Runs on the CPU in about a second per
8K prompt for the default checkpoint (the pure-PyTorch op), so no GPU is needed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lighthouse.checkpoint import load_checkpoint
from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_accuracy


def parse_layer_set(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"a layer set is comma-separated layer indices, e.g. 3,4 (got {text!r})") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--layer-sets", type=parse_layer_set, nargs="+", required=True,
                   help="layers that run Lighthouse, one comma-separated set per variant (e.g. 1,2,3,4 3,4)")
    p.add_argument("--trials", type=int, default=2, help="prompts per (context, depth)")
    p.add_argument("--dense-tail-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="JSON with every sample (default: print only)")
    args = p.parse_args()

    model, _ = load_checkpoint(args.checkpoint, device=args.device, load_tokenizer=False)
    n_layers = model.config.num_hidden_layers
    lh = model.config.lighthouse
    trained = lh.full_attn_layers
    results = []
    for layers in args.layer_sets:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise SystemExit(f"layers {bad} are outside 0..{n_layers - 1}")
        lh.full_attn_layers = [i for i in range(n_layers) if i not in layers]
        t0 = time.perf_counter()
        for rec in passkey_accuracy(model, args.contexts, prefills=("sparse",), trials=args.trials,
                                    dense_tail_tokens=args.dense_tail_tokens, device=args.device):
            rec["layer_set"] = layers
            results.append(rec)
            print(f"lighthouse layers {','.join(map(str, layers)) or '-':>9}  context {rec['context']:>6}  "
                  f"accuracy {rec['accuracy']:.2f} ({rec['n']} prompts; ran Lighthouse in {rec['lighthouse_layers']})",
                  flush=True)
        print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "checkpoint": args.checkpoint, "checkpoint_full_attn_layers": trained, "depths": list(DEFAULT_DEPTHS),
            "trials": args.trials, "dense_tail_tokens": args.dense_tail_tokens, "device": args.device,
            "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
