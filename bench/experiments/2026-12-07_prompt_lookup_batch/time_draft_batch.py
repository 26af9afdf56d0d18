"""Prompt-lookup drafting's host cost per row and step at batch 32 (every row of a verify step drafts), the proposer
of a given commit (OLD) against this tree's, alternating, on byte-level pass-key documents as the spec bench builds
them, each row's output copying the document from its own point; the same drafts checked at every step. Each row's
index of its prompt (built at its first draft, once per request) is built before the timing.
Usage: time_draft_batch.py OLD_COMMIT OUT.json"""
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from lighthouse.engine.speculative import proposer as new
from lighthouse.train.passkey import passkey_prompts

old_commit, out = sys.argv[1], sys.argv[2]
src = subprocess.run(["git", "show", f"{old_commit}:lighthouse/engine/speculative/proposer.py"], capture_output=True,
                     text=True, check=True).stdout
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(src)
spec = importlib.util.spec_from_file_location("proposer_old", f.name)
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)

B, K, STEPS = 32, 4, 48
res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": "cpu", "machine": platform.machine(),
       "torch": torch.__version__, "numpy": np.__version__, "old": old_commit, "batch": B, "k": K, "steps": STEPS,
       "cases": []}


def run(mod, ids, starts):
    """us per row and step (sync + draft), and the drafts."""
    rows = [mod.TokenHistory(ids, len(ids) + STEPS + 8) for _ in starts]
    outs = [[] for _ in starts]
    for h in rows:  # the index of the prompt is built at a request's first draft, once: not timed here
        h.draft(K)
    drafts = []
    t = time.perf_counter()
    for _ in range(STEPS):
        for h, o, s in zip(rows, outs, starts):
            o.append(int(ids[s + len(o)]))
            h.sync(o)
            drafts.append(h.draft(K))
    return 1e6 * (time.perf_counter() - t) / (STEPS * len(starts)), drafts


for n in (8192, 131072, 524288):
    ids = passkey_prompts(n, [0.5], 1, seed=31)[0][1].numpy().astype(np.int32)
    starts = np.linspace(1000, n - 2 * STEPS, B).astype(int).tolist()
    times = {"old": [], "new": []}
    same = True
    for _ in range(3):
        t_old, d_old = run(old, ids, starts)
        t_new, d_new = run(new, ids, starts)
        times["old"].append(round(t_old, 2))
        times["new"].append(round(t_new, 2))
        same &= d_old == d_new
    case = {"tokens": n, "us_per_row_step": times, "old_median": sorted(times["old"])[1],
            "new_median": sorted(times["new"])[1], "same_drafts": same,
            "drafted_share": sum(map(bool, d_new)) / len(d_new)}
    case["speedup"] = round(case["old_median"] / case["new_median"], 2)
    res["cases"].append(case)
    print(case, flush=True)
json.dump(res, open(out, "w"), indent=1)
