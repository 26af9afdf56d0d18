"""What a checkpoint answers through the SDK, asked as a new user asks it: against a running server.

    bash scripts/serve.sh &                         # the bundled checkpoint, on http://127.0.0.1:8000
    python -m bench.evals.documents_ask_eval --out bench/results/DATE_cpu_first_questions/documents_ask.json

Three kinds of request, all greedy, each prompt prefilled cold (`cache_prompt: false`):
  completion  the bundled checkpoint's pass-key question (docs/results.md): a passkey document cut where the key starts, max_tokens 5
  ask         client.documents.ask(document, "What is the pass key?") with the SDK's default max_tokens (256) and
              with --short-tokens (24: "The pass key is 12345." is 22); a hit is the key anywhere in the answer
  hello       "Hello" as a chat turn and as a completion prompt (docs/deployment.md's Docker examples): the text is recorded
The documents are bench/evals/passkey_eval.py's (lighthouse.train.passkey.passkey_prompts: seeded, 5 depths).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_prompts
from lighthouse.train.synthetic import PASSKEY_QUESTION
from lighthouse_client import Client

COLD = {"cache_prompt": False}


def documents(context: int, trials: int) -> list[tuple[float, str, str]]:
    """[(depth, document text ending with the question's line, key)] from the passkey prompts."""
    out = []
    for depth, ids, key in passkey_prompts(context, DEFAULT_DEPTHS, trials, seed=0):
        text = bytes(ids[1:].tolist()).decode("ascii")  # without BOS; ends with PASSKEY_QUESTION
        out.append((depth, text, key))
    return out


def completion_row(client: Client, context: int, docs) -> dict:
    samples = []
    for depth, text, key in docs:
        t0 = time.perf_counter()
        got = client.completions.create(prompt=text, max_tokens=5, temperature=0, extra_body=COLD).choices[0].text
        samples.append({"depth": depth, "key": key, "got": got, "hit": got == key,
                        "seconds": round(time.perf_counter() - t0, 2)})
    return {"kind": "completion", "context": context, "max_tokens": 5, **summary(samples)}


def ask_row(client: Client, context: int, docs, max_tokens: int | None) -> dict:
    samples = []
    for depth, text, key in docs:
        document = text.removesuffix(PASSKEY_QUESTION)
        kwargs = {} if max_tokens is None else {"max_tokens": max_tokens}  # None: the SDK's default
        t0 = time.perf_counter()
        answer = client.documents.ask(document, "What is the pass key?", extra_body=COLD, **kwargs)
        text_out = answer.text
        samples.append({"depth": depth, "key": key, "got": text_out, "hit": key in text_out,
                        "key_at_char": text_out.find(key), "starts_with_answer": text_out.lstrip().startswith(
                            ("The pass key is " + key, key)),
                        "completion_tokens": answer.usage.completion_tokens if answer.usage else None,
                        "finish_reason": answer.finish_reason, "seconds": round(time.perf_counter() - t0, 2)})
    row = {"kind": "ask", "context": context, "max_tokens": max_tokens or "SDK default (256)", **summary(samples)}
    row["answers_starting_with_the_key"] = sum(s["starts_with_answer"] for s in samples)
    return row


def hello_rows(client: Client) -> list[dict]:
    chat = client.chat.completions.create(messages=[{"role": "user", "content": "Hello"}], max_tokens=32,
                                          temperature=0, extra_body=COLD)  # fmt: skip
    completion = client.completions.create(prompt="Hello", max_tokens=16, temperature=0, extra_body=COLD)
    return [{"kind": "hello", "as": "chat", "max_tokens": 32, "got": chat.choices[0].message.content},
            {"kind": "hello", "as": "completion", "max_tokens": 16, "got": completion.choices[0].text}]


def summary(samples: list[dict]) -> dict:
    hits = sum(s["hit"] for s in samples)
    return {"hits": hits, "n": len(samples), "seconds_mean": round(sum(s["seconds"] for s in samples) / len(samples), 2),
            "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None)
    p.add_argument("--contexts", type=int, nargs="+", default=[8192], help="document lengths in bytes (= tokens)")
    p.add_argument("--trials", type=int, default=2, help="documents per depth (5 depths)")
    p.add_argument("--short-tokens", type=int, default=24)
    p.add_argument("--out", default=None, help="JSON file (default: print only)")
    args = p.parse_args(argv)
    client = Client(base_url=args.base_url, api_key=args.api_key, timeout=600, max_retries=0)
    model = client.models.list().data[0]
    print(f"{model.id} (max_model_len {model.max_model_len}) at {args.base_url}", flush=True)
    rows = hello_rows(client)
    for r in rows:
        print(f"hello as {r['as']}: {r['got']!r}", flush=True)
    for n in args.contexts:
        docs = documents(n, args.trials)
        for row in (completion_row(client, n, docs), ask_row(client, n, docs, args.short_tokens),
                    ask_row(client, n, docs, None)):
            rows.append(row)
            print(f"{n:>6} {row['kind']:10} max_tokens {row['max_tokens']!s:18} {row['hits']}/{row['n']} "
                  f"({row['seconds_mean']} s each); e.g. {row['samples'][0]['got'][:100]!r}", flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"base_url": args.base_url, "model": model.id, "date": time.strftime("%Y-%m-%d"),
                                   "depths": list(DEFAULT_DEPTHS), "trials": args.trials, "results": rows},
                                  indent=1) + "\n")  # fmt: skip
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
