"""The first draft of a request on a long prompt: with the prompt's 2-gram index built at the first draft (as
before) and with it started in the background as the request arrives (Speculator.admit), the prefill in between
standing in as a sleep (a 512K sparse prefill takes seconds on a GPU; a few hundred ms suffice here).
Usage: time_first_draft.py OUT.json"""
import json
import platform
import sys
import time

import numpy as np

from lighthouse.engine.speculative.proposer import TokenHistory
from lighthouse.train.passkey import passkey_prompts

res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": "cpu", "machine": platform.machine(), "k": 4, "cases": []}
for n in (131072, 524288):
    ids = passkey_prompts(n, [0.5], 1, seed=31)[0][1].numpy().astype(np.int32)
    cont = ids[5000:5003].tolist()
    row = {"tokens": n}
    for mode in ("at_first_draft", "in_background"):
        times = []
        for _ in range(3):
            h = TokenHistory(ids, n + 64)
            if mode == "in_background":
                h.build_in_background()
            time.sleep(0.5)  # the prefill
            h.sync(cont)
            t = time.perf_counter()
            h.draft(4)
            times.append(round(1e3 * (time.perf_counter() - t), 3))
        row[f"first_draft_ms_{mode}"] = sorted(times)[1]
        row[f"runs_{mode}"] = times
    res["cases"].append(row)
    print(row, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
