"""`lighthouse adapter merge BASE ADAPTER --out DIR`: one checkpoint folder from a base and a LoRA adapter."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="adapter_command", required=True, metavar="ACTION")
    m = sub.add_parser("merge", help="write BASE with ADAPTER merged into its weights as a checkpoint folder",
                       description="Write BASE with ADAPTER merged into its weights (and the adapter's RoPE, "
                                   "positions and Lighthouse layers in config.json) as a checkpoint folder that "
                                   "`lighthouse serve --checkpoint` loads.")
    m.add_argument("base", help="the base checkpoint folder the adapter was trained on")
    m.add_argument("adapter", help="the adapter folder (`lighthouse train --lora-rank` output)")
    m.add_argument("--out", required=True, help="the checkpoint folder to write (replaced if it exists)")
    m.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="weights dtype (default bf16)")
    m.add_argument("--no-check-base", action="store_true",
                   help="merge even when BASE's weights are not the ones the adapter recorded")


def run(args: argparse.Namespace) -> int:
    import torch

    from lighthouse.adapter import AdapterError, merge_adapter
    from lighthouse.checkpoint import CheckpointError

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    try:
        out = merge_adapter(args.base, args.adapter, args.out, dtype=dtype, check_base=not args.no_check_base)
    except (AdapterError, CheckpointError, FileNotFoundError) as exc:
        print(f"lighthouse adapter merge: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
