#!/usr/bin/env bash
# Device call 3: the retrieval table for the stage-2 checkpoint (runs/ck_long, carried; stage 3 at 256K was
# dropped: its time budget gave it 7 steps, which broke the chat answers), in order of priority so that what the
# 570 s leave out is the least needed: 512K (dense and sparse prefill, tail 64), 16K and 128K (every cell but
# compact decode), the layer table at 128K, 64K, then 256K.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=runs/ck_long
start=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - start) )); }
qb() { [ "$(left)" -gt 15 ] && timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" --trials 20 \
    --out "$OUT/table" "$@" 2>&1 | grep -v "^\[transformers\]"; echo "-- $(( $(date +%s) - start ))s"; }
qb --contexts 524288 --tails 64 --decodes dense --layers-at 0
qb --contexts 16384 131072 --decodes dense sparse --layers-at 0
qb --contexts 131072 --decodes dense sparse --layers-at 131072
qb --contexts 65536 --decodes dense sparse --layers-at 0
qb --contexts 262144 --tails 64 --decodes dense sparse --layers-at 0
