"""Capture, per RULER sample, the attention the document's positions receive from three groups of queries of the
tail (question, chat template, answer), per layer and head, so that candidate span scores can be compared offline
(score.py) without asking again.

The server runs in this process as in citations_ruler.py (same split, same request); the engine's
`answer_attention` (imported by lighthouse/engine/documents.py) is wrapped: it runs the tail against the document's
K/V once more with every tail query's softmax kept, stores the groups' means, and returns what the server's own
`answer_attention` returns (called too; the difference is recorded), so the answers and cited spans are the
server's.

Tail layout (server/documents.py chat_prompt): "\\n\\n" + question (with RULER's answer prefix) + "<|im_end|>\\n
<|im_start|>assistant\\n", then the answer. Groups (tail indices):
- question: [0, e), e = the last <|im_end|> of the prompt's tail (the separator, the question, the answer prefix)
- template: [e, a0), a0 = the last prompt position (<|im_end|>, "\\n", <|im_start|>, "assistant")
- answer:   [a0, T - 1), the queries that produced the answer's tokens (the server's)

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/experiments/2026-12-07_cpu_citations_ruler_v2/capture.py \\
        niah_single_2:25-49 niah_multikey_1:25-49 qa_1:25-49 niah_single_1:25-34 --samples-dir /work/main/.samples \\
        --arrays runs/cite_v2/dev --out bench/results/2026-12-07_cpu_citations_ruler_v2/capture_dev.json

Per sample: a row in --out (answer, RULER score, needles, the server's spans, timings) and, for a correct answer
whose needles were located, --arrays/TASK-INDEX.npz: ans, qst, tpl (L, H, n) means over each group's queries of the
softmax weight on the document's n text tokens; perq (T, n) every tail query's weight averaged over layers and
heads; span_of (n,) each token's span (server/citations.py's sentences); spans (S, 2); bounds [e, a0, T].
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import httpx
import numpy as np
import torch

import lighthouse.engine.documents as engine_documents
import lighthouse_server.documents as server_documents
from bench.evals import citations_ruler as cr
from bench.evals import ruler_tasks
from bench.evals.citations_eval import Server
from lighthouse.catalog.registry import prepare_model
from lighthouse.engine import citations as ec
from lighthouse.model.chunked import chunked_forward
from lighthouse.ops.attention import attention_with_cache
from lighthouse_server.citations import sentence_spans, token_starts

IM_END = None  # the tokenizer's <|im_end|> id, set in main
last: dict = {}


class CaptureAttention(ec._CitationAttention):
    """The citations backend, keeping every tail query's softmax on the document's keys per layer and head."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.probs: dict[int, torch.Tensor] = {}  # layer -> (H, T, P)

    def attend(self, layer: int, last_layer: bool):
        q = torch.cat(self._q, dim=2)  # (1, H, T, D)
        k_doc, v_doc = self.doc_kv(layer)
        k = torch.cat([k_doc.to(q.dtype), *self._k], dim=2)  # (1, H_kv, N, D)
        v = torch.cat([v_doc.to(q.dtype), *self._v], dim=2)
        with torch.no_grad():
            out = attention_with_cache(q, k, v)
            H, H_kv = q.shape[1], k.shape[1]
            kk = k[0].float().repeat_interleave(H // H_kv, dim=0)  # (H, N, D)
            logits = torch.einsum("htd,hnd->htn", q[0].float(), kk) / math.sqrt(q.shape[-1])
            pos = torch.arange(self.P, self.N)[None, :, None]
            logits = logits.masked_fill(torch.arange(self.N)[None, None, :] > pos, -math.inf)
            self.probs[layer] = torch.softmax(logits, dim=-1)[..., : self.P]  # (H, T, P)
        self._q = self._k = self._v = []
        yield self.P, self.N, out


_server_answer_attention = engine_documents.answer_attention


def capturing_answer_attention(model, pool, tables, P, tail_ids, answer_len, layers=None, **kw):
    ref = _server_answer_attention(model, pool, tables, P, tail_ids, answer_len, layers, **kw)
    N, T = P + len(tail_ids), len(tail_ids)
    prompt_tail = tail_ids[: T - answer_len]
    e = max(i for i, t in enumerate(prompt_tail) if t == IM_END)
    a0 = T - answer_len - 1
    L = model.config.num_hidden_layers
    backend = CaptureAttention(model, lambda i: pool.read(tables[i], P), P, N, (P + a0, N - 1), list(range(L)), 4096)
    for _ in chunked_forward(model, torch.tensor(tail_ids, dtype=torch.long, device=pool.k.device), P, backend, 4096):
        pass
    probs = torch.stack([backend.probs[i] for i in range(L)])  # (L, H, T, P)
    ans = probs[:, :, a0 : T - 1].mean(2)
    last.update(ans=ans, qst=probs[:, :, :e].mean(2), tpl=probs[:, :, e:a0].mean(2), perq=probs.mean((0, 1)),
                bounds=[e, a0, T], ref_diff=float((ans.mean((0, 1)) - ref).abs().max()))
    return ref


engine_documents.answer_attention = capturing_answer_attention
_top_spans = server_documents.top_spans


def recording_top_spans(tokenizer, text, prefix_ids, scores, top_k):
    last.update(tokenizer=tokenizer, text=text, prefix_ids=prefix_ids)
    return _top_spans(tokenizer, text, prefix_ids, scores, top_k)


server_documents.top_spans = recording_top_spans


def save_arrays(path: Path) -> None:
    begin, starts = token_starts(last["tokenizer"], last["text"], last["prefix_ids"])
    spans = sentence_spans(last["text"])
    span_of = np.searchsorted(np.array([a for a, _ in spans]), np.array(starts), side="right") - 1
    sl = slice(begin, len(last["prefix_ids"]))
    np.savez_compressed(path, ans=last["ans"][..., sl].numpy(), qst=last["qst"][..., sl].numpy(),
                        tpl=last["tpl"][..., sl].numpy(), perq=last["perq"][:, sl].numpy(),
                        span_of=np.maximum(span_of, 0), spans=np.array(spans), bounds=np.array(last["bounds"]))


def picks(arg: str) -> tuple[str, list[int]]:
    name, sel = arg.split(":")
    if "-" in sel:
        a, b = sel.split("-")
        return name, list(range(int(a), int(b) + 1))
    return name, [int(x) for x in sel.split(",")]


def main() -> None:
    global IM_END
    p = argparse.ArgumentParser()
    p.add_argument("picks", nargs="+", help="task:25-49 or task:1,5,7 (indices into the n50 file)")
    p.add_argument("--samples-dir", required=True)
    p.add_argument("--arrays", required=True, help="folder for the per-sample .npz")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    tasks = ruler_tasks.load_tasks()
    folder = str(prepare_model("smollm2-135m-instruct"))
    squad = cr.load_squad()
    Path(args.arrays).mkdir(parents=True, exist_ok=True)
    rows = []
    with Server(device="cpu", model="smollm2-135m-instruct") as srv, httpx.Client(base_url=srv.url, timeout=3600) as c:
        from transformers import AutoTokenizer

        IM_END = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|im_end|>")
        for pick in args.picks:
            name, idx = picks(pick)
            task = tasks[name]
            samples = ruler_tasks.cached_generate(task, 4096, 50, 42, folder, args.samples_dir)
            for i in idx:
                t0 = time.perf_counter()
                row = samples[i]
                document, question = cr.split_prompt(task.kind, row["input"])
                needles = cr.locate(task, document, question, row["outputs"], squad)
                last.clear()
                got = cr.ask(c, document, question, task.max_tokens, max(3, len(needles or [])))
                score = ruler_tasks.sample_scores(task, [got["answer"]], [row["outputs"]])[0]
                rec = {"task": name, "index": i, "score": score, "correct": score == 1.0, "needles": needles,
                       "answer": (got["answer"] or "")[:300], "outputs": row["outputs"],
                       "cited": [{"start": s["start"], "end": s["end"], "score": s["score"]} for s in got["spans"]],
                       "completion_tokens": got["completion_tokens"], "document_tokens": got["document_tokens"],
                       "bounds": last.get("bounds"), "ref_diff": last.get("ref_diff")}
                if needles is not None:
                    rec.update(cr.grade(needles, got["spans"]))
                    if rec["correct"]:
                        save_arrays(Path(args.arrays) / f"{name}-{i}.npz")
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                rows.append(rec)
                print(f"{name:16} #{i:<3} score {score:.2f} ranks {rec.get('ranks')} bounds {rec['bounds']} "
                      f"diff {rec['ref_diff']:.1e} {rec['seconds']} s", flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
