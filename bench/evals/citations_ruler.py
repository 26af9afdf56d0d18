"""Do citations point at the needle on RULER's tasks? A served model asked RULER's questions about uploaded documents.

    python -m bench.evals.citations_ruler --model smollm2-135m-instruct --ruler-samples .samples \\
        --tasks niah_single_1,niah_single_2,niah_multivalue,qa_1 --length 4096 --n 10 \\
        --out bench/results/DATE_cpu_citations_ruler/citations_ruler.json

The pass-key version on the bundled checkpoint is citations_eval.py; this one reads RULER's samples (ruler.py's
--samples-dir: `ruler_tasks.cached_generate` finds the file of --file-samples samples made with the served model's
tokenizer, or makes it) and starts the server in this process (citations_eval.Server) on --model or --checkpoint.

Per sample (the first --n of each task, after the first --skip: samples 25-49 were the dev split on which the span
score was chosen, bench/results/2026-12-07_cpu_citations_ruler_v2/):
- Split: RULER's prompt is cut where its question starts (the last "\\nWhat " for niah, the last "\\n\\nAnswer the
  question" for qa). The text before it (RULER's instruction and the haystack, in RULER's order) is the document,
  uploaded with POST /v1/documents; the rest (the question and RULER's answer prefix) is the user message, asked by
  document_id, so the model sees RULER's prompt with "\\n\\n" (the documents layout) between haystack and question.
  Greedy, the task's max_tokens, `"citations": true` with citations_top_k max(--top-k, needles).
- Score: RULER's per-sample metric (ruler_tasks.sample_scores); an answer is correct when it scores 1 (every value
  for niah, any reference for qa).
- Needles: for niah, each expected value (RULER's outputs) is found in the document and its needle is the sentence
  holding it; for qa_1 (SQuAD), the needle is the sentence(s) of the gold paragraph holding an annotated answer (at
  its answer_start), the paragraph found in RULER's copy of SQuAD by the question. A sentence ends after `.`, `!` or
  `?` before whitespace, or at a line break. A sample whose needle cannot be located is counted, not graded.
- Grade: a needle is cited at rank r when the r-th span overlaps it. `any_top3`: some needle among the first 3
  spans (the rate the issue asks for); `all_topk`: every needle among the first max(3, needles).

citations_ruler.json: {"date", "device", "torch", "model", "length", "n", "seed", "top_k", "ruler_samples",
"by_task": {task: {summary..., "samples": [...]}}, "overall"}; rates are among correct answers whose needles
were located.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from pathlib import Path

from bench.evals.citations_eval import overlaps

QUESTION_STARTS = {"niah": "\nWhat ", "qa": "\n\nAnswer the question"}
_SENTENCE_END = re.compile(r"[.!?]+(?=\s)|\n")


def split_prompt(kind: str, prompt: str) -> tuple[str, str]:
    """(document, question) of a RULER prompt: cut at the last start of its question (the question keeps RULER's
    answer prefix; the newlines between them are the documents layout's separator)."""
    cut = prompt.rindex(QUESTION_STARTS[kind])
    return prompt[:cut], prompt[cut:].lstrip("\n")


def sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence of `text` holding characters [start, end): from the last sentence end before `start` (leading
    whitespace left out) to the first sentence end at or after `end`."""
    a = 0
    for m in _SENTENCE_END.finditer(text, 0, start):
        a = m.end()
    while a < start and text[a].isspace():
        a += 1
    m = _SENTENCE_END.search(text, end)
    return a, m.end() if m else len(text)


def niah_needles(document: str, outputs: list[str]) -> list[list[tuple[int, int]]] | None:
    """Per expected value, the sentences of the document holding it (None when one does not occur)."""
    needles = []
    for value in outputs:
        found = [m.start() for m in re.finditer(re.escape(value), document)]
        if not found:
            return None
        needles.append(sorted({sentence_around(document, i, i + len(value)) for i in found}))
    return needles


def squad_answers(data: dict) -> dict[str, list[tuple[str, list[dict]]]]:
    """question -> [(its paragraph, its answers: {"text", "answer_start"})] over a SQuAD-format dict."""
    out: dict[str, list[tuple[str, list[dict]]]] = {}
    for article in data["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                if qa["answers"]:
                    out.setdefault(qa["question"], []).append((para["context"], qa["answers"]))
    return out


def qa_needles(document: str, question: str, outputs: list[str],
               squad: dict[str, list[tuple[str, list[dict]]]]) -> list[list[tuple[int, int]]] | None:
    """One needle: the sentences of the gold paragraph (in the document) holding an annotated answer. None when the
    question, its paragraph in the document or an answer there cannot be found."""
    query = question.split("Question: ", 1)[-1].rsplit(" Answer:", 1)[0]
    for paragraph, answers in squad.get(query, []):
        at = document.find(paragraph)
        if at < 0 or sorted(a["text"] for a in answers) != sorted(outputs):
            continue
        spans = {sentence_around(document, at + a["answer_start"], at + a["answer_start"] + len(a["text"]))
                 for a in answers if paragraph[a["answer_start"]:].startswith(a["text"])}
        return [sorted(spans)] if spans else None
    return None


def grade(needles: list[list[tuple[int, int]]], spans: list[dict]) -> dict:
    """Each needle's rank among the cited spans (the first that overlaps one of its sentences; None if none does),
    whether some needle is among the first 3 and whether every one is among the first max(3, needles)."""
    ranks = [next((r for r, s in enumerate(spans) if any(overlaps(s, reg) for reg in regions)), None)
             for regions in needles]
    k = max(3, len(needles))
    return {"ranks": ranks, "any_top3": any(r is not None and r < 3 for r in ranks),
            "all_topk": all(r is not None and r < k for r in ranks), "top1": 0 in ranks}


def locatable(task) -> bool:
    """niah (the values are in the haystack) or SQuAD QA (the answers are annotated in their paragraph)."""
    return task.kind == "niah" or task.args.get("dataset") == "squad"


def locate(task, document: str, question: str, outputs: list[str], squad) -> list[list[tuple[int, int]]] | None:
    if task.kind == "niah":
        return niah_needles(document, outputs)
    return qa_needles(document, question, outputs, squad)


def ask(client, document: str, question: str, max_tokens: int, top_k: int) -> dict:
    """Upload the document, ask the question by id with citations, delete it."""
    d = client.post("/v1/documents", json={"text": document})
    d.raise_for_status()
    doc = d.json()
    try:
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": question}], "document_id": doc["id"], "max_tokens": max_tokens,
            "temperature": 0, "citations": True, "citations_top_k": top_k})
        r.raise_for_status()
    finally:
        client.delete(f"/v1/documents/{doc['id']}")
    body = r.json()
    choice = body["choices"][0]
    return {"answer": choice["message"]["content"], "spans": choice["citations"], "document_tokens": doc["tokens"],
            "prompt_tokens": body["usage"]["prompt_tokens"], "completion_tokens": body["usage"]["completion_tokens"]}


def run_task(client, task, rows: list[dict], top_k: int, squad) -> list[dict]:
    from bench.evals import ruler_tasks

    out = []
    for row in rows:
        t0 = time.perf_counter()
        document, question = split_prompt(task.kind, row["input"])
        needles = locate(task, document, question, row["outputs"], squad)
        got = ask(client, document, question, task.max_tokens, max(top_k, len(needles or [])))
        score = ruler_tasks.sample_scores(task, [got["answer"]], [row["outputs"]])[0]
        rec = {"index": row["index"], "outputs": row["outputs"], "answer": (got["answer"] or "")[:300],
               "score": score, "correct": score == 1.0, "needles": needles,
               "cited": [{"start": s["start"], "end": s["end"], "score": s["score"], "text": s["text"][:120]}
                         for s in got["spans"]],
               **{k: got[k] for k in ("document_tokens", "prompt_tokens", "completion_tokens")}}
        if needles is not None:
            rec.update(grade(needles, got["spans"]))
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        out.append(rec)
        print(f"{task.name:16} #{row['index']:<3} score {score:.2f} needles {len(needles or [])} ranks "
              f"{rec.get('ranks')} {rec['seconds']} s", flush=True)
    return out


def summary(rows: list[dict]) -> dict:
    """Counts and rates among correct answers whose needles were located."""
    graded = [r for r in rows if r["correct"] and r["needles"] is not None]
    n = len(graded)
    return {"n": len(rows), "correct": sum(r["correct"] for r in rows),
            "mean_score": round(statistics.mean(r["score"] for r in rows), 4) if rows else None,
            "graded": n, "not_located": sum(r["needles"] is None for r in rows),
            "any_top3": sum(r["any_top3"] for r in graded), "all_topk": sum(r["all_topk"] for r in graded),
            "top1": sum(r["top1"] for r in graded),
            "any_top3_rate": round(sum(r["any_top3"] for r in graded) / n, 4) if n else None,
            "all_topk_rate": round(sum(r["all_topk"] for r in graded) / n, 4) if n else None,
            "top1_rate": round(sum(r["top1"] for r in graded) / n, 4) if n else None,
            "seconds_per_sample": round(statistics.mean(r["seconds"] for r in rows), 2) if rows else None}


def load_squad() -> dict:
    import long_context_eval.data.synthetic as synthetic

    return squad_answers(json.loads((Path(synthetic.__file__).parent / "json" / "squad.json").read_text()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a known model, e.g. smollm2-135m-instruct")
    src.add_argument("--checkpoint", help="a checkpoint folder")
    p.add_argument("--ruler-samples", required=True, help="RULER's samples folder (ruler.py --samples-dir)")
    p.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_1,niah_multivalue,qa_1",
                   help="comma list of RULER's niah tasks and qa_1")
    p.add_argument("--length", type=int, default=4096, help="the samples' length in tokens")
    p.add_argument("--n", type=int, default=10, help="samples per task (the file's first, after --skip)")
    p.add_argument("--skip", type=int, default=0, help="leave out the file's first SKIP samples")
    p.add_argument("--file-samples", type=int, default=50, help="samples in the folder's file (its name's nN)")
    p.add_argument("--seed", type=int, default=42, help="RULER's seed of the samples")
    p.add_argument("--top-k", type=int, default=3, help="spans asked for (at least the needles')")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import httpx
    import torch

    from bench.evals import ruler_tasks
    from bench.evals.citations_eval import Server

    args = parse_args(argv)
    tasks = ruler_tasks.load_tasks()
    names = args.tasks.split(",")
    if bad := [n for n in names if n not in tasks or not locatable(tasks[n])]:
        raise SystemExit(f"not a niah task or qa_1 (SQuAD): {bad}")
    if args.model:
        from lighthouse.catalog.registry import prepare_model

        folder = str(prepare_model(args.model))
    else:
        folder = args.checkpoint
    squad = load_squad() if any(tasks[n].kind == "qa" for n in names) else {}
    res = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "torch": torch.__version__,
           "machine": platform.machine(), "cpus": torch.get_num_threads(), "length": args.length, "n": args.n,
           "skip": args.skip, "seed": args.seed, "top_k": args.top_k, "ruler_samples": args.ruler_samples,
           "file_samples": args.file_samples, "tokenizer": folder, "by_task": {}}
    source = {"model": args.model} if args.model else {"checkpoint": args.checkpoint}
    with Server(device=args.device, **source) as srv, httpx.Client(base_url=srv.url, timeout=3600) as client:
        res["model"] = client.get("/v1/models").json()["data"][0]["id"]
        all_rows = []
        for name in names:
            rows = ruler_tasks.cached_generate(tasks[name], args.length, args.file_samples, args.seed, folder,
                                               args.ruler_samples)[args.skip : args.skip + args.n]
            got = run_task(client, tasks[name], rows, args.top_k, squad)
            all_rows += got
            res["by_task"][name] = {**summary(got), "max_tokens": tasks[name].max_tokens, "samples": got}
            print(name, json.dumps(summary(got)), flush=True)
            res["overall"] = summary(all_rows)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["overall"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
