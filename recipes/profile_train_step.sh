#!/usr/bin/env bash
# Where a training step's time goes on one GPU (the `default` preset): 40 steps with Triton's fused norm scores
# (LIGHTHOUSE_TRITON_SCORES=auto) and with torch's (torch), the median Lighthouse and dense step of each, then
# torch.profiler over 3 Lighthouse steps (top kernels by CUDA and by CPU time). Output in bench/results/
# 2026-11-28_h200_profile_train_step/log.txt.
#
#   bash recipes/profile_train_step.sh
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
for mode in auto torch; do
  LIGHTHOUSE_TRITON_SCORES=$mode timeout 120 python3 -m lighthouse.train --preset default --out /tmp/p_$mode --no-resume --no-progress --max-steps 40 --dense-tail-steps 10 --time-budget-s 0 --eval-every 0 --eval-samples 1 --log-every 1 > /tmp/p_$mode.log 2>&1
  python3 - $mode <<'PY'
import json, sys
m = sys.argv[1]
recs = [json.loads(l) for l in open(f"/tmp/p_{m}/metrics.jsonl") if l.strip()]
tr = [r for r in recs if r["type"] == "train"]
lh = sorted(131072 / r["tokens_per_s"] for r in tr[5:30]); de = sorted(131072 / r["tokens_per_s"] for r in tr[31:])
print(m, "lighthouse step median %.3f s, dense step median %.3f s" % (lh[len(lh)//2], de[len(de)//2]))
PY
done
tail -3 /tmp/p_auto.log
python3 - <<'PY'
import time, torch
from torch.profiler import ProfilerActivity, profile
from lighthouse.train.config import train_preset
from lighthouse.train.trainer import Trainer
cfg = train_preset("default")
cfg.out_dir, cfg.max_steps, cfg.dense_tail_steps, cfg.time_budget_s = "/tmp/pp", 12, 2, 0
cfg.eval_every, cfg.progress, cfg.resume = 0, False, False
t = Trainer(cfg)
for s in range(4):
    t._train_step(s, "lighthouse")
torch.cuda.synchronize()
t0 = time.perf_counter()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for s in range(4, 7):
        t._train_step(s, "lighthouse")
    torch.cuda.synchronize()
print("3 lighthouse steps under the profiler: %.3f s" % (time.perf_counter() - t0))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60))
PY
