"""Passkey retrieval for a follow-up question on a cached document: compact sessions against full ones.

    python -m bench.evals.compact_followup_eval --contexts 8192 16384 --trials 2 --out bench/results/.../compact_followup.json

A passkey prompt (lighthouse.train.passkey.passkey_prompts: BOS + a document with a 5-digit key at some depth + the
passkey question) is split where sparse prefill splits it: the "document" is all but its last `dense_tail_tokens`
tokens (the sparse head), the "question" is those last tokens (the end of the filler, then the passkey question,
which is shorter than the tail). Every mode below then prefills the same head sparsely, so that the follow-up
modes' second request can reuse the first one's head whole (a sparse head is reusable only whole, at its split).
Modes, for each context and depth:

- full:             document + question once, kv_mode full, sparse decode (no prefix cache): the reference.
- compact:          the same prompt once, kv_mode compact (no prefix cache).
- compact_followup: document + a filler question of exactly `dense_tail_tokens` tokens (1 token generated, cached),
                    then document + question, both kv_mode compact with the prefix cache: the question is prefilled
                    against the cached compact context (the head's selected entries + the tail) when it hits.
- full_followup:    the same two requests with kv_mode full and dense decode: the exact prefix cache, a second
                    reference.

A follow-up "hits" when its prefill.cached_tokens reaches the document's length (it reused the first request's
head). Answers are the 5 greedy tokens, compared with the key exactly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lighthouse.engine import EngineConfig
from lighthouse.engine.llm import LLM
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_prompts
from lighthouse.train.synthetic import PASSKEY_QUESTION

MODES = ("full", "compact", "compact_followup", "full_followup")
# what the single request (or a follow-up's second one) runs with; a follow-up's first request has the same options
OPTIONS = {
    "full": RequestOptions(prefill="sparse", decode="sparse", kv_mode="full", cache_prompt=False),
    "compact": RequestOptions(prefill="sparse", kv_mode="compact", cache_prompt=False),
    "compact_followup": RequestOptions(prefill="sparse", kv_mode="compact", cache_prompt=True),
    "full_followup": RequestOptions(prefill="sparse", decode="dense", kv_mode="full", cache_prompt=True),
}
ANSWER = SamplingParams(max_tokens=5, temperature=0.0)
WARM = SamplingParams(max_tokens=1, temperature=0.0)
FILLER_QUESTION = "\nA question about the text above, answered in one word. What colour is the sea? The sea is "


def split_prompts(llm: LLM, context: int, trials: int, tail: int) -> list[dict]:
    """[{depth, key, doc, question, filler}]: token-id lists; doc + question is the passkey prompt, doc + filler
    the first request of a follow-up (filler is exactly `tail` tokens, so both requests' sparse head is doc)."""
    tok = llm.tokenizer
    if len(tok.encode(PASSKEY_QUESTION, add_special_tokens=False)) > tail:
        raise SystemExit(f"the passkey question does not fit in a dense tail of {tail} tokens")
    filler = tok.encode(FILLER_QUESTION, add_special_tokens=False)
    while len(filler) < tail:  # a longer tail: more of the same preamble before the question
        filler = tok.encode(FILLER_QUESTION.split(" What")[0], add_special_tokens=False) + filler
    filler = filler[-tail:]
    out = []
    for depth, ids, key in passkey_prompts(context, DEFAULT_DEPTHS, trials, seed=0):
        ids = ids.tolist()
        out.append({"depth": depth, "key": key, "doc": ids[:-tail], "question": ids[-tail:], "filler": filler})
    return out


def run_mode(llm: LLM, mode: str, prompts: list[dict]) -> list[dict]:
    """One result per prompt: {depth, key, got, correct, cached_tokens, hit (follow-ups), prefill}."""
    options = OPTIONS[mode]
    followup = mode.endswith("_followup")
    if followup:
        if llm.engine.prefix_cache is not None:
            llm.engine.prefix_cache.clear()  # no entry from another mode or an earlier run
        llm.generate([p["doc"] + p["filler"] for p in prompts], WARM, options)
    gens = llm.generate([p["doc"] + p["question"] for p in prompts], ANSWER, options)
    results = []
    for p, g in zip(prompts, gens):
        info = g.prefill
        cached = info.cached_tokens if info else 0
        r = {"depth": p["depth"], "key": p["key"], "got": g.text, "correct": g.text == p["key"],
             "cached_tokens": cached, "doc_tokens": len(p["doc"]),
             "prefill": {"path": info.path, "sparse_tokens": info.sparse_tokens, "dense_tokens": info.dense_tokens,
                         "decode": info.decode} if info else None}
        if followup:
            r["hit"] = cached >= len(p["doc"])
        results.append(r)
    return results


def summarize(mode: str, context: int, results: list[dict], seconds: float) -> tuple[list[dict], dict]:
    """Records per depth and one summary for (mode, context)."""
    def record(rs: list[dict], **extra) -> dict:
        rec = {"mode": mode, "context": context, **extra, "accuracy": sum(r["correct"] for r in rs) / len(rs), "n": len(rs)}
        if mode.endswith("_followup"):
            rec["hits"] = sum(r["hit"] for r in rs)
            rec["cached_tokens"] = [r["cached_tokens"] for r in rs]
        return rec

    by_depth = [record([r for r in results if r["depth"] == d], depth=d,
                       samples=[{k: r[k] for k in ("key", "got", "cached_tokens", "prefill")}
                                for r in results if r["depth"] == d])
                for d in DEFAULT_DEPTHS]
    summary = record(results, doc_tokens=results[0]["doc_tokens"], seconds=round(seconds, 2))
    return by_depth, summary


def fit_context(llm: LLM, context: int) -> int:
    """The context, less what the answer needs beyond max_model_len (16384 -> 16379 on the bundled checkpoint)."""
    fitted = min(context, llm.engine.max_model_len - ANSWER.max_tokens)
    if fitted != context:
        print(f"context {context} -> {fitted}: the prompt and {ANSWER.max_tokens} answer tokens must fit "
              f"max_model_len {llm.engine.max_model_len}", flush=True)
    return fitted


def print_table(summaries: list[dict]) -> None:
    print(f"\n{'mode':<17} {'context':>7} {'accuracy':>8} {'n':>3} {'hits':>5} {'seconds':>8}")
    for s in summaries:
        hits = f"{s['hits']}/{s['n']}" if "hits" in s else "-"
        print(f"{s['mode']:<17} {s['context']:>7} {s['accuracy']:>8.2f} {s['n']:>3} {hits:>5} {s['seconds']:>8.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384])
    p.add_argument("--trials", type=int, default=2, help="prompts per (context, depth)")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8_e4m3"])
    p.add_argument("--max-num-seqs", type=int, default=8, help="prompts prefilled and decoded together")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    config = EngineConfig(max_num_seqs=args.max_num_seqs, kv_cache_dtype=args.kv_cache_dtype)
    llm = LLM(args.checkpoint, config, device=args.device)
    records, summaries = [], []
    for n in args.contexts:
        context = fit_context(llm, n)
        prompts = split_prompts(llm, context, args.trials, config.dense_tail_tokens)
        for mode in args.modes:
            t0 = time.perf_counter()
            by_depth, summary = summarize(mode, context, run_mode(llm, mode, prompts), time.perf_counter() - t0)
            records += by_depth
            summaries.append(summary)
            hits = f" hits {summary['hits']}/{summary['n']} cached_tokens {summary['cached_tokens']}" \
                if "hits" in summary else ""
            print(f"{context:>6} {mode:<17} accuracy {summary['accuracy']:.2f}{hits} ({summary['seconds']:.1f} s)",
                  flush=True)
            write(args, records, summaries)
    print_table(summaries)


def write(args, records: list[dict], summaries: list[dict]) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "checkpoint": args.checkpoint or "bundled", "device": args.device, "kv_cache_dtype": args.kv_cache_dtype,
            "trials": args.trials, "depths": list(DEFAULT_DEPTHS), "dense_tail_tokens": EngineConfig.dense_tail_tokens,
            "results": records, "summary": summaries}, indent=1))


if __name__ == "__main__":
    main()
