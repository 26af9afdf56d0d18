"""Passkey retrieval through the serving engine: every prefill x decode path the server offers.

    python -m bench.evals.engine_passkey_eval --contexts 8192 16384 --trials 2 --out bench/results/.../engine_passkey.json

bench/evals/passkey_eval.py measures greedy retrieval with dense decode (lighthouse.engine.llm.greedy_generate, on a model
in memory). This runs the same prompts through lighthouse.engine.LLM, as `lighthouse serve` does (the checkpoint's
tokenizer and stop ids, batching, text), for prefill dense|sparse x decode dense|sparse, and
once more with the question asked as a chat turn (the SDK's documents.ask layout: its default system prompt, then
the document, a blank line and "Question: ...", inside the checkpoint's chat template; `lighthouse train
--chat-fraction` trains that layout, the bundled checkpoint never saw it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from lighthouse.engine import EngineConfig
from lighthouse.engine.llm import LLM
from lighthouse.engine.options import DECODE_MODES, PREFILL_MODES, RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_prompts
from lighthouse.train.synthetic import PASSKEY_QUESTION
from lighthouse.train.synthetic_chat import SDK_SYSTEM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--trials", type=int, default=2, help="prompts per (context, depth)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--chat-only", action="store_true", help="only the chat-turn rows")
    p.add_argument("--chat-tokens", type=int, default=24, help="tokens generated for a chat answer (\"The pass key is 12345.\" is 22)")
    p.add_argument("--kv-cache-dtype", nargs="+", default=["auto"], choices=["auto", "fp8_e4m3"],
                   help="K/V storage; several: each completion row once per dtype (chat rows with the first)")
    p.add_argument("--prefill", nargs="+", default=list(PREFILL_MODES), choices=PREFILL_MODES)
    p.add_argument("--decode", nargs="+", default=list(DECODE_MODES), choices=DECODE_MODES)
    p.add_argument("--no-chat", action="store_true", help="skip the chat-turn rows")
    args = p.parse_args()

    llms = {d: LLM(args.checkpoint, EngineConfig(max_num_seqs=4, kv_cache_dtype=d), device=args.device)
            for d in args.kv_cache_dtype}
    llm = llms[args.kv_cache_dtype[0]]
    greedy = SamplingParams(max_tokens=5, temperature=0.0)
    rows = []
    for n in args.contexts:
        prompts = passkey_prompts(n, DEFAULT_DEPTHS, args.trials, seed=0)
        combos = [] if args.chat_only else itertools.product(args.prefill, args.decode, args.kv_cache_dtype)
        for prefill, decode, kv_dtype in combos:
            llm = llms[kv_dtype]
            t0 = time.perf_counter()
            options = RequestOptions(prefill=prefill, decode=decode, cache_prompt=False)
            gens = llm.generate([ids.tolist() for _, ids, _ in prompts], greedy, options)
            got = [g.choices[0].text for g in gens]
            hits = [g == key for g, (_, _, key) in zip(got, prompts)]
            rows.append({"context": n, "prompt": "completion", "prefill": prefill, "decode": decode,
                         "kv_cache_dtype": kv_dtype, "accuracy": sum(hits) / len(hits), "n": len(hits), "seconds": time.perf_counter() - t0,
                         "samples": [{"key": k, "got": g} for (_, _, k), g in zip(prompts, got)]})
            print(f"{n:>6} completion prefill={prefill:6} decode={decode:6} kv={kv_dtype:8} "
                  f"accuracy {rows[-1]['accuracy']:.2f}", flush=True)
        if args.no_chat:
            write(args, rows)
            continue
        # the same documents asked as a chat turn (the SDK's documents.ask layout)
        llm = llms[args.kv_cache_dtype[0]]
        tok = llm.tokenizer
        chats = []
        for _, ids, key in prompts:
            doc = bytes(ids[1:].tolist()).decode("ascii").removesuffix(PASSKEY_QUESTION)
            msgs = [{"role": "system", "content": SDK_SYSTEM},
                    {"role": "user", "content": f"{doc}\n\nQuestion: What is the pass key?"}]
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)  # as the server builds it
            ids = tok.encode(text, add_special_tokens=False)
            excess = len(ids) - (llm.engine.max_model_len - 16)  # the chat markers must fit too: cut the document's start
            if excess > 0:
                msgs[0]["content"] = msgs[0]["content"][excess:]
                text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                ids = tok.encode(text, add_special_tokens=False)
            chats.append(ids)
        gens = llm.generate(chats, SamplingParams(max_tokens=args.chat_tokens, temperature=0.0),
                            RequestOptions(cache_prompt=False))
        got = [g.choices[0].text for g in gens]
        hits = [key in g for g, (_, _, key) in zip(got, prompts)]
        rows.append({"context": n, "prompt": "chat", "prefill": "sparse", "decode": "dense",
                     "accuracy": sum(hits) / len(hits), "n": len(hits),
                     "samples": [{"key": k, "got": g} for (_, _, k), g in zip(prompts, got)]})
        print(f"{n:>6} chat       prefill=sparse decode=dense  accuracy {rows[-1]['accuracy']:.2f} "
              f"(key anywhere in {args.chat_tokens} tokens; e.g. {got[0]!r})", flush=True)
        write(args, rows)
    write(args, rows)


def write(args, rows) -> None:
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint or "bundled", "device": args.device,
                                              "trials": args.trials, "depths": list(DEFAULT_DEPTHS), "results": rows},
                                             indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
