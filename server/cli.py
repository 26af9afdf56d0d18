"""Start the OpenAI-compatible HTTP server.

`lighthouse serve`: pyproject.toml registers this module under the lighthouse.commands entry points, and the
first line above is its help in `lighthouse --help`. Flags override LIGHTHOUSE_* environment variables, which
override the defaults.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys

from lighthouse.engine.config import EngineSettings, LoadSettings
from lighthouse.flags import add_flags, flags, given
from lighthouse_server.settings import ENV_PREFIX, Settings

# (flag, type, help) per Settings field, generated from the fields: one flag each, its variable named in its help
_FLAGS = flags(Settings, ENV_PREFIX)


def flag_groups() -> list[tuple[str, list[str]]]:
    """The Settings fields by group, in `--help` order: the model's source, the server's own, the engine's."""
    engine, load = list(EngineSettings.model_fields), list(LoadSettings.model_fields)
    server = [name for name in Settings.model_fields if name not in engine and name not in load]
    return [("model", load), ("server", server), ("engine", engine)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for title, names in flag_groups():
        add_flags(p.add_argument_group(title), Settings, ENV_PREFIX, names)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the flags given, over the environment, over the defaults (Settings parses a flag's value as it
    does the variable's)."""
    return Settings(**given(args, Settings))


def check_before_loading(settings: Settings) -> socket.socket:
    """Everything that can be refused before the weights load, cheapest first: the port, the checkpoint's files and
    config.json (lighthouse.checkpoint.verify_checkpoint), then memory against the machine (startup_checks.py).
    Raises StartupError or CheckpointError; logs the memory warnings. Returns the port's bound socket (the server's
    to listen on; closed here if a later check fails)."""
    from lighthouse.checkpoint import load_config, verify_checkpoint
    from lighthouse_server.app import checkpoint_dir
    from lighthouse_server.startup_checks import check_memory, closed_on_error, reserve_port

    sock = reserve_port(settings.host, settings.port)
    with closed_on_error(sock):
        checkpoint = checkpoint_dir(settings)
        verify_checkpoint(checkpoint, require_tokenizer=True)
        for warning in check_memory(settings, load_config(checkpoint)):
            logging.getLogger("lighthouse_server.cli").warning(warning)
    return sock


def _settings_error(exc: Exception) -> str:
    """One line naming every bad flag (and its variable) in words, not pydantic's report (its types, its URL)."""
    from pydantic import ValidationError

    from lighthouse_server.errors import error_words
    if not isinstance(exc, ValidationError):
        return str(exc)
    out = []
    for e in exc.errors():
        name = str(e["loc"][0]) if e.get("loc") else ""
        where = f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()})" if name in Settings.model_fields else name
        out.append(f"{where or 'settings'}: {error_words(e)}")
    return "; ".join(out)


def _exit_zero(_sig, _frame) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # First, before the slow imports: a SIGTERM while starting up (docker stop right after start) also exits 0.
    signal.signal(signal.SIGTERM, _exit_zero)
    from pydantic import ValidationError

    from lighthouse.catalog import UnknownModel
    from lighthouse.checkpoint import CheckpointError
    from lighthouse_server.app import build_engine, create_app
    from lighthouse_server.shutdown import serve
    from lighthouse_server.startup_checks import StartupError, closed_on_error

    try:
        settings = settings_from_args(args)
        settings.engine_config()  # what only the engine checks (a block size that is no power of two) fails here too
    except (ValidationError, ValueError) as exc:
        print(f"lighthouse serve: invalid settings: {_settings_error(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # before uvicorn starts, so a bad checkpoint is one clear line, not a lifespan traceback
        sock = check_before_loading(settings)
        with closed_on_error(sock):
            engine = build_engine(settings)
    except StartupError as exc:
        print(f"lighthouse serve: {exc}", file=sys.stderr)
        return 1
    except CheckpointError as exc:
        print(f"lighthouse serve: cannot load the checkpoint: {exc}", file=sys.stderr)
        return 1
    # --model unknown or its package unreachable; an allocation refused; what only the engine checks
    except (UnknownModel, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"lighthouse serve: cannot prepare the model: {exc}", file=sys.stderr)
        return 1
    # SIGTERM/SIGINT: /ready 503, the pre-stop delay, drain, exit 0; the engine thread dying: exit 1
    return serve(create_app(settings, engine=engine), settings, sock=sock)


if __name__ == "__main__":  # `python -m lighthouse_server.cli ...`: the same as `lighthouse serve ...`
    _parser = argparse.ArgumentParser(prog="lighthouse serve", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
