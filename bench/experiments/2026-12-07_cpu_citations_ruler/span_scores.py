"""Where does the needle rank among all spans when it is not in the top 3? The per-position scores the server's
citations computed (captured by wrapping server/documents.py's `top_spans`, nothing else changed), ranked by the
documented span score (the sum over the span's tokens) and, for comparison, by the mean per token.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/experiments/2026-12-07_cpu_citations_ruler/span_scores.py \\
        niah_single_2:0-24 niah_multikey_1:2,5,7,10,12,14,15,17 qa_1:0,3,5,12,19 --samples-dir .samples \\
        --out bench/results/2026-12-07_cpu_citations_ruler/span_scores.json
"""

from __future__ import annotations

import argparse
import bisect
import json

import httpx

import lighthouse_server.documents as server_documents
from bench.evals import citations_ruler as cr
from bench.evals import ruler_tasks
from bench.evals.citations_eval import Server
from lighthouse.catalog.registry import prepare_model
from lighthouse_server.citations import sentence_spans, token_starts

captured: list[tuple] = []
_top_spans = server_documents.top_spans


def recording_top_spans(tokenizer, text, prefix_ids, scores, top_k):
    captured.append((tokenizer, text, prefix_ids, list(scores)))
    return _top_spans(tokenizer, text, prefix_ids, scores, top_k)


server_documents.top_spans = recording_top_spans


def ranks(tokenizer, text, prefix_ids, scores, needles):
    """Each needle's best rank (0-based) among all spans by sum and by mean per token; the spans' sizes."""
    begin, starts = token_starts(tokenizer, text, prefix_ids)
    spans = sentence_spans(text)
    firsts = [a for a, _ in spans]
    mass, count = [0.0] * len(spans), [0] * len(spans)
    for pos, ch in enumerate(starts):
        s = max(0, bisect.bisect_right(firsts, ch) - 1)
        mass[s] += scores[begin + pos]
        count[s] += 1
    mean = [m / c if c else 0.0 for m, c in zip(mass, count)]
    out = {}
    for name, key in (("sum", mass), ("mean", mean)):
        order = sorted(range(len(spans)), key=lambda i: -key[i])
        rank_of = {i: r for r, i in enumerate(order)}
        out[name] = [min(rank_of[i] for i, (a, b) in enumerate(spans) if any(a < y and x < b for x, y in regions))
                     for regions in needles]
    hit = [i for i, (a, b) in enumerate(spans) if any(a < y and x < b for regions in needles for x, y in regions)]
    out["needle_sum"] = round(max(mass[i] for i in hit), 6)
    out["needle_tokens"] = count[max(hit, key=lambda i: mass[i])]
    top = sorted(range(len(spans)), key=lambda i: -mass[i])[:3]
    out["top3_sum"] = [round(mass[i], 6) for i in top]
    out["top3_tokens"] = [count[i] for i in top]
    out["spans"] = len(spans)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("picks", nargs="+", help="task:0-24 or task:1,5,7")
    p.add_argument("--out", required=True)
    p.add_argument("--samples-dir", default=".samples", help="RULER's samples (ruler.py --samples-dir)")
    args = p.parse_args()
    tasks = ruler_tasks.load_tasks()
    folder = str(prepare_model("smollm2-135m-instruct"))
    squad = cr.load_squad()
    rows = []
    with Server(device="cpu", model="smollm2-135m-instruct") as srv, httpx.Client(base_url=srv.url, timeout=3600) as c:
        for pick in args.picks:
            name, sel = pick.split(":")
            idx = (list(range(int(sel.split("-")[0]), int(sel.split("-")[1]) + 1)) if "-" in sel
                   else [int(x) for x in sel.split(",")])
            task = tasks[name]
            samples = ruler_tasks.cached_generate(task, 4096, 50, 42, folder, args.samples_dir)
            for i in idx:
                row = samples[i]
                document, question = cr.split_prompt(task.kind, row["input"])
                needles = cr.locate(task, document, question, row["outputs"], squad)
                captured.clear()
                got = cr.ask(c, document, question, task.max_tokens, 3)
                score = ruler_tasks.sample_scores(task, [got["answer"]], [row["outputs"]])[0]
                tok, text, prefix_ids, scores = captured[0]
                r = {"task": name, "index": i, "score": score, "top3": cr.grade(needles, got["spans"])["any_top3"],
                     "completion_tokens": got["completion_tokens"], **ranks(tok, text, prefix_ids, scores, needles)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
