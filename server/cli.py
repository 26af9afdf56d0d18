"""Start the OpenAI-compatible HTTP server.

`lighthouse serve`: pyproject.toml registers this module under the lighthouse.commands entry points, and the
first line above is its help in `lighthouse --help`. Flags override LIGHTHOUSE_* environment variables, which
override the defaults.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes", "on")


# flag -> Settings field; every flag defaults to None so that only given flags override the environment
_FLAGS = [
    ("--checkpoint", str, "checkpoint directory (default: the bundled checkpoint)"),
    ("--model", str, "a known model instead of --checkpoint (`lighthouse models list`), e.g. smollm2-135m-instruct: "
                     "converted once from its package into ~/.cache/lighthouse/models, then served under that name"),
    ("--served-model-name", str, "model id reported by /v1/models"),
    ("--host", str, "bind address (default 127.0.0.1)"),
    ("--port", int, "port (default 8000)"),
    ("--api-key", str, "require this API key (Authorization: Bearer KEY)"),
    ("--prefill", str, "default prefill path: sparse | dense"),
    ("--decode", str, "default decode path: dense | sparse"),
    ("--kv-mode", str, "default KV layout: full | compact (the Lighthouse layers keep only the selected context, "
                       "~14 GB for a 512K document instead of ~70; its requests decode sparsely)"),
    ("--dense-tail-tokens", int, "prompt tokens prefilled densely at the end (default 64)"),
    ("--max-model-len", int, "cap on prompt + completion tokens"),
    ("--max-num-seqs", int, "sequences decoded together (default 64)"),
    ("--max-waiting", int, "requests that may queue beyond the running batch's free slots; more get 429/503 "
                           "(default 256; 0: no queue)"),
    ("--queue-full-status", int, "429 or 503"),
    ("--retry-after-s", int, "Retry-After seconds sent with 429/503 responses (default 1)"),
    ("--kv-cache-gb", float, "KV cache budget in GiB"),
    ("--host-cache-gb", float, "host-memory tier of the prefix cache in GiB: a document evicted from the GPU waits in "
                               "pinned host memory and returns over PCIe (default 0: off)"),
    ("--kv-cache-dtype", str, "auto | fp8_e4m3: store K/V in the model's dtype or in float8 (half of bf16's bytes)"),
    ("--block-size", int, "KV cache positions per block, a power of two in 16..1024 (default 128)"),
    ("--enforce-eager", _bool, "run the decode step eagerly, no CUDA graphs (default false)"),
    ("--max-prefill-chunk-ms", float, "while others decode, a long prefill runs in pieces of about this many ms, "
                                      "a decode step between them (default 100; 0: a prefill runs whole)"),
    ("--prefill-chunk-tokens", int, "token chunk of a prefill's projections and MLP (default 32768)"),
    ("--express-prefill-tokens", int, "a prompt of at most this many tokens is prefilled whole between two pieces of "
                                      "a long prefill instead of after it (default 4096; 0: off)"),
    ("--enable-prefix-caching", _bool, "true | false: reuse a repeated prompt prefix's KV cache (default true)"),
    ("--device", str, "cpu | cuda | cuda:N"),
    ("--dtype", str, "float32 | bfloat16"),
    ("--default-max-tokens", int, "a chat completion's max_tokens when the request gives none, at most what the "
                                  "context leaves (default 1024)"),
    ("--max-body-mb", float, "request body limit in MiB (default 64)"),
    ("--header-timeout-s", float, "seconds a request's headers may take to arrive; slower connections are closed "
                                  "(default 10)"),
    ("--body-timeout-s", float, "seconds a request's body may take to arrive after its headers; then 408 "
                                "(default 60)"),
    ("--cors-origins", str, "comma-separated allowed CORS origins"),
    ("--shutdown-delay-s", float, "SIGTERM: seconds /ready reports 503 while requests are still served, so load "
                                  "balancers stop sending (default 0)"),
    ("--drain-timeout-s", float, "SIGTERM: then, seconds in-flight requests may take to finish (default 30)"),
    ("--log-level", str, "debug | info | warning"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    for flag, typ, help_text in _FLAGS:
        env = f"[env LIGHTHOUSE_{flag[2:].upper().replace('-', '_')}]"
        if typ is _bool:  # `--enforce-eager` alone means true; `--enforce-eager false` also parses
            p.add_argument(flag, type=typ, nargs="?", const=True, default=None, metavar="BOOL", help=f"{help_text} {env}")
        else:
            p.add_argument(flag, type=typ, default=None, help=f"{help_text} {env}")


def settings_from_args(args: argparse.Namespace):
    from lighthouse_server.settings import Settings

    overrides = {}
    for flag, _typ, _help in _FLAGS:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value  # Settings parses strings as it does environment values (e.g. cors_origins)
    return Settings(**overrides)


def _exit_zero(_sig, _frame) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    # First, before the slow imports: a SIGTERM while starting up (docker stop right after start) also exits 0.
    signal.signal(signal.SIGTERM, _exit_zero)
    from pydantic import ValidationError

    from lighthouse.catalog import UnknownModel
    from lighthouse.checkpoint import CheckpointError
    from lighthouse_server.app import build_engine, create_app, engine_config
    from lighthouse_server.shutdown import serve

    try:
        settings = settings_from_args(args)
        engine_config(settings)  # what only the engine checks (a block size that is no power of two) fails here too
    except (ValidationError, ValueError) as exc:
        print(f"lighthouse serve: invalid settings:\n{exc}")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # before uvicorn starts, so a bad checkpoint is one clear line, not a lifespan traceback
        engine = build_engine(settings)
    except CheckpointError as exc:
        print(f"lighthouse serve: cannot load the checkpoint: {exc}", file=sys.stderr)
        return 1
    except (UnknownModel, FileNotFoundError, RuntimeError) as exc:  # --model: unknown, or its package unreachable
        print(f"lighthouse serve: cannot prepare the model: {exc}", file=sys.stderr)
        return 1
    # SIGTERM/SIGINT: /ready 503, the pre-stop delay, drain, exit 0; the engine thread dying: exit 1
    return serve(create_app(settings, engine=engine), settings)


if __name__ == "__main__":  # `python -m lighthouse_server.cli ...`: the same as `lighthouse serve ...`
    _parser = argparse.ArgumentParser(prog="lighthouse serve", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
