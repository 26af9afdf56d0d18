"""The cached 128K question (decode_bench's cached_question_128k) under torch.profiler: where its TTFT goes.
Run from the root of the tree to measure (this tree or .ab_old), the bench's 270M paper shape, random bf16 weights:
    python cached_question_profile.py OUT_TXT [DOC_TOKENS]"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench.perf.decode_bench import TAIL, build_model, drive, prompt
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 131072
model, _ = build_model("full", 2 * n)
eng = LLMEngine(model, None, EngineConfig(prefill="sparse", decode="dense", dense_tail_tokens=TAIL, max_num_seqs=8))
opts = RequestOptions("sparse", "dense", TAIL, cache_prompt=True)
lines = []
for seed in (5, 6, 7):
    drive(eng, [prompt(n + TAIL, seed, 1)], 1, opts)
    t = time.perf_counter()
    r = drive(eng, [prompt(n + TAIL, seed, 2)], 1, opts)
    lines.append(f"seed {seed}: second request {time.perf_counter() - t:.4f} s, steps {len(r.steps)}, "
                 f"step seconds {[round(s[1], 4) for s in r.steps]}, cached {r.info[r.rids[0]].cached_tokens}")
drive(eng, [prompt(n + TAIL, 9, 1)], 1, opts)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    t = time.perf_counter()
    drive(eng, [prompt(n + TAIL, 9, 2)], 1, opts)
    torch.cuda.synchronize()
    lines.append(f"profiled second request {time.perf_counter() - t:.4f} s")
ka = prof.key_averages()
lines.append(ka.table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))
lines.append(ka.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
open(out, "w").write("\n".join(lines))
print("\n".join(lines[:4]))
