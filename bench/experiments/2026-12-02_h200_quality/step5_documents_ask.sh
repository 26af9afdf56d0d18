#!/usr/bin/env bash
# Not run yet (the session's device time was spent): the documents_ask half of the retrieval table, 20 prompts per
# cell, on the bundled checkpoint as committed (its chat template in tokenizer_config.json; step3's documents_ask
# cells ran on a copy without it and were dropped). About 6 minutes on one H200. It resumes a copy of the committed
# retrieval.json, so $OUT/table/retrieval.json comes back with every cell (the completion cells kept, the new ones
# added): copy it over bench/results/2026-12-02_h200_quality/retrieval.json, keeping its formats_note updated, and
# check its "chat_template" field is the byte tokenizer's, not "fallback ...".
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=lighthouse/assets/default-checkpoint
mkdir -p "$OUT/table"
python3 - "$OUT/table/retrieval.json" "$CK" <<'PY'
import json, sys
doc = json.load(open("bench/results/2026-12-02_h200_quality/retrieval.json"))
doc["checkpoint"] = sys.argv[2]  # quality_bench resumes only a file of the same checkpoint, trials, seed, max_tokens
json.dump(doc, open(sys.argv[1], "w"), indent=1)
PY
start=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - start) )); }
qb() { [ "$(left)" -gt 15 ] && timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" --trials 20 \
    --formats documents_ask --out "$OUT/table" "$@" 2>&1 | grep -v "^\[transformers\]"; echo "-- $(( $(date +%s) - start ))s"; }
qb --contexts 16384 65536 131072 --decodes dense sparse --layers-at 131072
qb --contexts 524288 262144 --tails 64 --decodes dense sparse --layers-at 0
