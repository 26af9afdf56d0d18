"""`lighthouse bench <what>`: argument parsing only; the work lives beside it (attention.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("attention", help="Lighthouse vs dense attention (and the official code) over N, fwd and fwd+bwd")
    p.add_argument("--out", default="bench/results/attention", help="directory for attention.json and attention.png")
    p.add_argument("--official", default=None, help="DIR holding torchtitan/models/llama3/model/lighthouse_selection*.py")
    p.add_argument("--n", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072, 262144, 524288])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="H_kv (default: heads); the GQA shape runs too")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--pooling-factor", type=int, default=4)
    p.add_argument("--topk", type=int, default=2048)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dense-max-n", type=int, default=524288, help="skip dense baselines above this N")
    p.add_argument("--torch-max-n", type=int, default=524288, help="skip the pure-PyTorch op above this N")
    p.add_argument("--no-gqa", action="store_true", help="skip the H=32, H_kv=8 shape")


def run(args: argparse.Namespace) -> int:
    if args.bench == "attention":
        from lighthouse.bench.attention import BenchConfig, run_attention_bench  # noqa: PLC0415 - lazy

        cfg = BenchConfig(
            out=args.out, official=args.official, ns=tuple(args.n), heads=args.heads, kv_heads=args.kv_heads or args.heads,
            head_dim=args.head_dim, levels=args.levels, pooling_factor=args.pooling_factor, topk=args.topk,
            reps=args.reps, dense_max_n=args.dense_max_n, torch_max_n=args.torch_max_n, gqa=not args.no_gqa,
        )
        return run_attention_bench(cfg)
    raise ValueError(f"unknown benchmark {args.bench!r}")
