"""Prompt-lookup drafting cost per step: the whole-sequence scan (`propose`) vs the 2-gram index
(`TokenHistory.draft`), on byte-level pass-key documents as the spec bench builds them, while the output copies the
document (the case speculation is for). Same drafts checked at every step. Usage: time_proposer.py OUT.json"""
import json
import platform
import sys
import time

import numpy as np
import torch

from lighthouse.engine.speculative.proposer import TokenHistory, propose
from lighthouse.train.passkey import passkey_prompts

res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": "cpu", "machine": platform.machine(),
       "torch": torch.__version__, "k": 4, "steps": 63, "cases": []}
for n in (8192, 131072, 524288):
    ids = passkey_prompts(n, [0.5], 1, seed=31)[0][1].numpy().astype(np.int32)
    cont = ids[5000:5064].tolist()  # the output copies the document from a matched point
    h = TokenHistory(ids, n + 64)
    t = time.perf_counter()
    h.draft(4)
    build = time.perf_counter() - t
    td = tp = 0.0
    same = True
    first_scan = None
    for i in range(1, 64):
        whole = h.sync(cont[:i])
        t = time.perf_counter(); d = h.draft(4); td += time.perf_counter() - t
        t = time.perf_counter(); p = propose(whole, 4); tp += time.perf_counter() - t
        same &= d == p
    t = time.perf_counter()
    propose(ids, 4)  # the prompt's own end (its last token frequent: the scan's worst case here)
    first_scan = time.perf_counter() - t
    res["cases"].append({"tokens": n, "index_build_ms": 1e3 * build, "draft_ms_per_step": 1e3 * td / 63,
                         "scan_ms_per_step": 1e3 * tp / 63, "scan_ms_at_prompt_end": 1e3 * first_scan,
                         "same_drafts": same})
    print(res["cases"][-1], flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
