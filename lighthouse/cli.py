"""The `lighthouse` command: serve | train | generate.

Only this module parses argv; each subcommand's parser and runner live beside the
code they drive and are imported lazily, so `lighthouse train` never imports FastAPI
and `lighthouse serve` never imports the trainer.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# subcommand -> module that defines add_arguments(parser) and run(args) -> int
_SUBCOMMANDS = {
    "serve": ("server.cli", "Start the OpenAI-compatible HTTP server."),
    "train": ("lighthouse.train.cli", "Train a Lighthouse checkpoint (Lighthouse stage + dense tail)."),
    "generate": ("lighthouse.engine.cli", "Generate text offline from a checkpoint."),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, import just that subcommand's module."""
    parser = argparse.ArgumentParser(prog="lighthouse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a part of the product not installed/built yet
            p.set_defaults(_missing=f"`lighthouse {name}` is unavailable: {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in _SUBCOMMANDS else None
    if chosen == "serve":  # a SIGTERM before the server installs its drain handler is still a clean stop
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parser = build_parser(only=chosen) if chosen else build_parser(only="")
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
