"""`lighthouse generate`: offline generation from a checkpoint, printed to stdout."""

from __future__ import annotations

import argparse
import json
import sys

from lighthouse.engine.options import DECODE_MODES, KV_MODES, PREFILL_MODES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled one)")
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prefill", choices=PREFILL_MODES, default="sparse")
    p.add_argument("--decode", choices=DECODE_MODES, default=None,
                   help="dense (default) | sparse; --kv-mode compact decodes sparsely")
    p.add_argument("--kv-mode", choices=KV_MODES, default=None,
                   help="full (default) | compact: the Lighthouse layers keep only the selected context")
    p.add_argument("--dense-tail-tokens", type=int, default=None,
                   help="prompt tokens prefilled densely at the end of a sparse prefill (default: the engine's, 64)")
    p.add_argument("--block-size", type=int, default=128,
                   help="KV cache positions per block (a power of two, 16..1024)")
    p.add_argument("--enforce-eager", action="store_true", help="run the decode step eagerly: no CUDA graphs")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--json", action="store_true", help="print a JSON object (text, token ids, prefill path)")


def configs_from_args(args: argparse.Namespace):
    """The engine's config and the request's options from the flags, each built once here (raises ValueError,
    InvalidRequest included, on a bad value). The modes are the request's; the engine keeps its defaults."""
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.options import RequestOptions

    config = EngineConfig(block_size=args.block_size, enforce_eager=args.enforce_eager)
    options = RequestOptions(prefill=args.prefill, decode=args.decode, dense_tail_tokens=args.dense_tail_tokens,
                             kv_mode=args.kv_mode)
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
