"""`lighthouse generate`: offline generation from a checkpoint, printed to stdout."""

from __future__ import annotations

import argparse
import json
import sys

from lighthouse.engine.config import EngineSettings, LoadSettings
from lighthouse.flags import add_flags, given


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--json", action="store_true", help="print a JSON object (text, token ids, prefill path)")
    add_flags(p.add_argument_group("model"), LoadSettings)
    # every engine setting, as `lighthouse serve` has it; the modes are this request's too
    add_flags(p.add_argument_group("engine"), EngineSettings)


def configs_from_args(args: argparse.Namespace):
    """The engine's config and the request's options from the flags, each built once here (raises ValueError,
    InvalidRequest included, on a bad value). The modes given are the request's as well as the engine's."""
    from lighthouse.engine.options import RequestOptions

    options = RequestOptions(prefill=args.prefill, decode=args.decode, dense_tail_tokens=args.dense_tail_tokens,
                             kv_mode=args.kv_mode)
    # one prompt: no warm-up of the paths it does not take (its own compiles are paid either way), unless asked
    config = EngineSettings(**{"warmup": False, **given(args, EngineSettings)}).engine_config()
    return config, options


def run(args: argparse.Namespace) -> int:
    from lighthouse.engine.errors import InvalidRequest
    from lighthouse.engine.llm import LLM
    from lighthouse.engine.sampling import SamplingParams

    if args.prompt_file:
        prompt = sys.stdin.read() if args.prompt_file == "-" else open(args.prompt_file, encoding="utf-8").read()
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        print("lighthouse generate: give --prompt TEXT or --prompt-file PATH", file=sys.stderr)
        return 2
    try:
        config, options = configs_from_args(args)
    except ValueError as exc:  # InvalidRequest included
        print(f"lighthouse generate: {exc}", file=sys.stderr)
        return 2
    llm = LLM(args.checkpoint, config, device=args.device, dtype=args.dtype)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed)
    try:
        gen = llm.generate(prompt, params, options)[0]
    except InvalidRequest as exc:
        print(f"lighthouse generate: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        c = gen.choices[0]
        info = gen.prefill
        print(json.dumps({"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                          "prompt_tokens": len(gen.prompt_token_ids),
                          "prefill": None if info is None else vars(info)}))
    else:
        sys.stdout.write(gen.text + "\n")
    return 0
