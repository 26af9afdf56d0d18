"""Do citations point at the needle? The bundled checkpoint asked for pass keys, with `"citations": true`.

    python -m bench.evals.citations_eval --out bench/results/DATE_cpu_citations/citations.json

Starts the server in this process (the bundled checkpoint unless --checkpoint) on a free port. For each seeded
pass-key document (lighthouse.train.passkey.passkey_prompts: 5 depths x --trials, the text before the question), it
uploads the document (POST /v1/documents), asks "What is the pass key?" by document_id (the SDK's layout, greedy,
--max-tokens) with citations, top 3, and deletes it. An answer is correct when it contains the key; a citation hits
when one of the top-3 spans overlaps the needle ("The pass key is K. Remember it. K is the pass key."). The rate
asked for: hits among correct answers.

With --layer-sets, each correct answer is also scored with other sets of layers (the engine's answer_attention,
called while the server is idle between requests): the measurement behind `citation_layers`.

RULER's needle and QA tasks on a served model (documents split from RULER's prompts): citations_ruler.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import torch

from lighthouse.train.passkey import DEFAULT_DEPTHS, passkey_prompts
from lighthouse.train.synthetic import PASSKEY_QUESTION
from lighthouse_server.citations import top_spans

QUESTION = "Question: What is the pass key?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """create_app(settings) under uvicorn in a thread, on 127.0.0.1."""

    def __init__(self, **settings):
        import uvicorn

        from lighthouse_server.app import create_app
        from lighthouse_server.settings import Settings

        self.settings = Settings(port=_free_port(), **settings)
        self.app = create_app(self.settings)
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.settings.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def documents(context: int, trials: int, seed: int, filler: str = "repeat") -> list[dict]:
    out = []
    for depth, ids, key in passkey_prompts(context, DEFAULT_DEPTHS, trials, seed=seed, filler=filler):
        text = bytes(ids[1:].tolist()).decode("ascii").removesuffix(PASSKEY_QUESTION)
        needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
        start = text.index(needle)
        out.append({"depth": depth, "key": key, "text": text, "needle": (start, start + len(needle))})
    return out


def overlaps(span: dict, needle: tuple[int, int]) -> bool:
    return span["start"] < needle[1] and needle[0] < span["end"]


def other_layers(srv: Server, doc_id: str, tail_ids: list[int], answer_ids: list[int], layer_sets: list[list[int]],
                 needle) -> dict:
    """Hit (needle in the top 3) per layer set, the engine's scores recomputed with those layers (the server is idle
    between requests, so reading its cache from this thread is safe)."""
    from lighthouse.engine.citations import answer_attention

    service = srv.app.state.documents
    d = service.docs[doc_id]
    eng = srv.app.state.engine.engine
    entry = service.pins.find(d.prefix_ids, d.kv_mode)
    out = {}
    for layers in layer_sets:
        scores = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(d.prefix_ids), tail_ids + answer_ids,
                                  len(answer_ids), layers).tolist()
        spans = top_spans(eng.tokenizer, d.text, d.prefix_ids, scores, 3)
        out[",".join(map(str, layers))] = any(overlaps(s, needle) for s in spans)
    return out


def run(srv: Server, docs: list[dict], max_tokens: int, layer_sets: list[list[int]], kv_mode: str | None = None
        ) -> list[dict]:
    rows = []
    with httpx.Client(base_url=srv.url, timeout=3600) as c:
        for doc in docs:
            t0 = time.perf_counter()
            d = c.post("/v1/documents", json={"text": doc["text"]} | ({"kv_mode": kv_mode} if kv_mode else {})).json()
            r = c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": QUESTION}], "document_id": d["id"], "max_tokens": max_tokens,
                "temperature": 0, "citations": True, "citations_top_k": 3, "logprobs": True}).json()
            choice = r["choices"][0]
            answer = choice["message"]["content"]
            spans = choice["citations"]
            row = {"depth": doc["depth"], "key": doc["key"], "tokens": d["tokens"], "answer": answer,
                   "correct": doc["key"] in answer, "needle": doc["needle"],
                   "cited": [{k: s[k] for k in ("start", "end", "score")} for s in spans],
                   "needle_in_top3": any(overlaps(s, doc["needle"]) for s in spans),
                   "needle_top1": bool(spans) and overlaps(spans[0], doc["needle"]),
                   "seconds": round(time.perf_counter() - t0, 2)}
            if layer_sets and row["correct"]:
                row["by_layers"] = other_layers(srv, d["id"], _tail_ids(srv, d["id"]), _answer_ids(r), layer_sets,
                                                doc["needle"])
            c.delete(f"/v1/documents/{d['id']}")
            rows.append(row)
            print(f"{d['tokens']:>6} depth {doc['depth']:.2f} correct {row['correct']!s:5} needle in top 3 "
                  f"{row['needle_in_top3']!s:5} {row.get('by_layers', '')} {row['seconds']} s", flush=True)
    return rows


def _answer_ids(response: dict) -> list[int]:
    """The answer's token ids, from its logprobs' token bytes (the byte-level tokenizer: one token per byte)."""
    return [b for t in response["choices"][0]["logprobs"]["content"] for b in t["bytes"]]


def _tail_ids(srv: Server, doc_id: str) -> list[int]:
    """The question's ids after the document's prefix, as the chat route builds them (documents.chat_prompt)."""
    import asyncio

    from lighthouse_server.schemas import ChatMessage

    service = srv.app.state.documents
    d = service.docs[doc_id]
    msgs = [ChatMessage(role="user", content=QUESTION)]
    ids, question_tokens = asyncio.run(service.chat_prompt(d, msgs, True))
    return ids[len(ids) - question_tokens:]


def summary(rows: list[dict]) -> dict:
    correct = [r for r in rows if r["correct"]]
    out = {"n": len(rows), "correct": len(correct),
           "needle_in_top3_of_correct": sum(r["needle_in_top3"] for r in correct) / max(1, len(correct)),
           "needle_top1_of_correct": sum(r["needle_top1"] for r in correct) / max(1, len(correct)),
           "needle_in_top3_of_all": sum(r["needle_in_top3"] for r in rows) / max(1, len(rows))}
    sets = sorted({k for r in correct for k in r.get("by_layers", {})})
    if sets:
        out["needle_in_top3_of_correct_by_layers"] = {
            k: sum(r["by_layers"][k] for r in correct) / len(correct) for k in sets}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled checkpoint")
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192], help="document lengths in bytes (= tokens)")
    p.add_argument("--trials", type=int, default=10, help="documents per depth (5 depths)")
    p.add_argument("--max-tokens", type=int, default=24, help="'The pass key is 12345.' is 22")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--filler", default="repeat", help="the documents' filler: repeat (5 sentences over and over, "
                                                      "what the checkpoint was trained on), sentences (random ones), alnum")
    p.add_argument("--layer-sets", default="", help="e.g. '0,1,2,5;1,2,5;5;0,1,2,3,4,5'")
    p.add_argument("--kv-mode", default=None, choices=["full", "compact"], help="the uploads' kv_mode (default: the "
                                                                                 "server's)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    layer_sets = [[int(x) for x in s.split(",")] for s in args.layer_sets.split(";") if s]
    random.seed(args.seed)
    res = {"date": time.strftime("%Y-%m-%d"), "device": "cpu", "torch": torch.__version__,
           "machine": platform.machine(), "cpus": torch.get_num_threads(), "depths": list(DEFAULT_DEPTHS),
           "trials": args.trials, "max_tokens": args.max_tokens, "seed": args.seed, "filler": args.filler,
           "kv_mode": args.kv_mode,
           "by_context": {}}
    settings = {"device": "cpu"} | ({"checkpoint": args.checkpoint} if args.checkpoint else {})
    with Server(**settings) as srv:
        from lighthouse.engine.citations import citation_layers

        res["citation_layers"] = citation_layers(srv.app.state.engine.engine.model.config)
        res["model"] = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        all_rows = []
        for n in args.contexts:
            rows = run(srv, documents(n, args.trials, args.seed, args.filler), args.max_tokens, layer_sets,
                       args.kv_mode)
            all_rows += rows
            res["by_context"][str(n)] = {**summary(rows), "samples": rows}
            print(n, json.dumps(summary(rows)), flush=True)
        res["overall"] = summary(all_rows)
    print(json.dumps(res["overall"], indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
