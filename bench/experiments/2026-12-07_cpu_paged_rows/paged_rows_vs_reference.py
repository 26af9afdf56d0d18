"""One layer's paged decode attention on the CPU: the reference (padded, gathered per query head) against the row
path (paged_attention_rows.py), the bundled checkpoint's head shape (4 query heads, 2 KV heads of 64, blocks of 128,
fp32), one thread, mean of 2 calls after one warm-up.
    python bench/experiments/2026-12-07_cpu_paged_rows/paged_rows_vs_reference.py OUT_JSON"""

import json
import sys
import time

import torch

from lighthouse.ops.paged_attention import paged_decode_attention_ref
from lighthouse.ops.paged_attention_rows import paged_decode_attention_rows
from tests.ops.test_paged_attention import make_case

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
rows = []
for B, lo, hi in [(64, 3000, 8000), (64, 100, 600), (128, 40, 80), (8, 1000, 2000), (4, 60000, 60001)]:
    lens = torch.randint(lo, hi, (B,), generator=g).tolist()
    c = make_case(lens, [0] * B, H=4, H_kv=2, D=64, BS=128, layout="plain")
    rec = {"rows": B, "entries": [lo, hi]}
    for name, fn in (("reference_ms", paged_decode_attention_ref), ("rows_ms", paged_decode_attention_rows)):
        fn(**c)
        t = time.perf_counter()
        fn(**c)
        fn(**c)
        rec[name] = round((time.perf_counter() - t) / 2 * 1000, 2)
    rec["speedup"] = round(rec["reference_ms"] / rec["rows_ms"], 2)
    print(rec, flush=True)
    rows.append(rec)
json.dump({"device": "cpu (2 cores, 1 thread used)", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "cases": rows}, open(sys.argv[1], "w"), indent=1)
