"""Passkey retrieval accuracy of a model, under dense and sparse (Lighthouse) prefill.

A prompt is BOS + a synthetic passkey document of `context` tokens cut just before the key's digits (the
generator the trainer uses); the model must greedily generate the 5 digits, through the serving engine
(lighthouse.engine.llm.greedy_generate). Sparse prefill runs the checkpoint's Lighthouse layers over all but the
last `dense_tail_tokens` prompt tokens, then prefills those densely against the cache; decode is dense.
"""

from __future__ import annotations

import random
import time

import torch

from lighthouse.engine.llm import greedy_generate
from lighthouse.tokenizer import BOS_ID
from lighthouse.train.synthetic import passkey_doc

DEFAULT_DEPTHS = (0.05, 0.25, 0.5, 0.75, 0.95)


def passkey_prompts(context: int, depths, trials: int, seed: int, filler: str = "repeat"):
    """[(depth, prompt ids (context,), key)] with the key's digits removed from the end."""
    out = []
    for d in depths:
        for t in range(trials):
            rng = random.Random(f"{seed}-{context}-{d}-{t}")
            doc = passkey_doc(rng, context + 6, filler=filler, depth=d)  # BOS + prompt = context; then 5 digits + ".\n"
            a, b = doc.answers[0]
            ids = [BOS_ID, *doc.text[:a].encode("ascii")]
            out.append((d, torch.tensor(ids), doc.text[a:b]))
    return out


@torch.no_grad()
def passkey_accuracy(model, contexts, *, prefills=("dense", "sparse"), depths=DEFAULT_DEPTHS, trials: int = 2,
                     dense_tail_tokens: int = 64, batch_size: int = 4, seed: int = 0, filler: str = "repeat",
                     device=None) -> list[dict]:
    """One record per (context, prefill): accuracy over depths x trials, per-depth accuracy, seconds."""
    device = device or next(model.parameters()).device
    model.eval()
    records = []
    for n in contexts:
        prompts = passkey_prompts(n, depths, trials, seed, filler)
        for prefill in prefills:
            t0 = time.perf_counter()
            hits: dict[float, list[bool]] = {}
            answers = []
            for s in range(0, len(prompts), batch_size):
                chunk = prompts[s : s + batch_size]
                ids = torch.stack([p for _, p, _ in chunk]).to(device)
                gen = greedy_generate(model, ids, 5, prefill=prefill, dense_tail_tokens=dense_tail_tokens if prefill == "sparse" else 0)
                for (d, _, key), row in zip(chunk, gen.tolist()):
                    got = bytes(t for t in row if t < 256).decode("ascii", "replace")
                    hits.setdefault(d, []).append(got == key)
                    answers.append({"depth": d, "key": key, "got": got})
            flat = [h for v in hits.values() for h in v]
            sparse_layers = [i for i in range(model.config.num_hidden_layers) if model.layer_uses_lighthouse(i, n - dense_tail_tokens)]
            records.append({
                "context": n, "prefill": prefill, "accuracy": sum(flat) / len(flat), "n": len(flat),
                "by_depth": {str(d): sum(v) / len(v) for d, v in hits.items()},
                "lighthouse_layers": sparse_layers if prefill == "sparse" else [],
                "dense_tail_tokens": dense_tail_tokens if prefill == "sparse" else None,
                "seconds": time.perf_counter() - t0, "samples": answers,
            })
    return records
