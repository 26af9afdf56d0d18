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
