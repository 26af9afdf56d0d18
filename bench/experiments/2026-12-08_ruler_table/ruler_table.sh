#!/usr/bin/env bash
# #26's RULER table on the device machine, a few cells a call, resumable across holds (each machine is wiped):
#   bash ruler_table.sh ADAPTER_DIR GROUP LENGTHS SAMPLES [SECONDS]
# GROUP: dense (dense prefill) | sparse (sparse prefill, dense tail 0, 64 and 1024) | compact (sparse prefill, tail
# 64, sparse decode from a compact session) | base (the base model itself: no adapter, ADAPTER_DIR ignored).
# Needs the base prepared in /tmp/models by an earlier call of the hold (device_recipe.sh does it) and RULER's wheels
# (.whl_ruler, carried by an earlier call of the hold). Samples: every staged .stage4-6/*.tar.xz, each unpacked once
# (made here with `ruler.py --generate-only --samples-dir .samples`: .stage4 16K-64K, 16.7 MB; .stage5 256K and 512K,
# 34.5 MB; .stage6 128K, 15.9 MB; each call's carry with the ~20 MB tree under 64 MiB), else generated on the
# machine's CPUs (minutes a set at 512K). The table so far comes in as .stage5/ruler_<GROUP>.json
# (what an earlier call returned) and goes back as $OUT/ruler_<GROUP>.json: ruler.py --resume skips the cells done.
set -uo pipefail
ADAPTER="$1" GROUP="$2" LENGTHS="$3" SAMPLES="$4" SECONDS_LEFT="${5:-480}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
for f in .stage4/*.tar.xz .stage5/*.tar.xz .stage6/*.tar.xz; do
    [ -f "$f" ] && [ ! -f "/tmp/.unpacked_$(basename "$f")" ] && tar -C /tmp -xJf "$f" && touch "/tmp/.unpacked_$(basename "$f")"
done
export LIGHTHOUSE_MODELS_DIR=/tmp/models
BASE=/tmp/models/smollm2-135m-instruct
[ -d "$BASE" ] || { echo "no prepared base in $BASE (run device_recipe.sh first in this hold)"; exit 1; }
STATE="$OUT/ruler_$GROUP.json"
[ -f ".stage5/ruler_$GROUP.json" ] && [ ! -f "$STATE" ] && cp ".stage5/ruler_$GROUP.json" "$STATE"
case $GROUP in
    dense) opts=(--prefill dense --dense-tail 64 --decode dense --kv-mode full) ;;
    sparse) opts=(--prefill sparse --dense-tail 0,64,1024 --decode dense --kv-mode full) ;;
    compact) opts=(--prefill sparse --dense-tail 64 --decode sparse --kv-mode compact) ;;
    base) opts=(--prefill dense --dense-tail 64 --decode dense --kv-mode full); ADAPTER=$BASE ;;
    *) echo "unknown group $GROUP"; exit 2 ;;
esac
PORT=8033
python3 -m lighthouse_server.cli --checkpoint "$ADAPTER" --served-model-name smollm2-135m-instruct --port $PORT \
    --device cuda --dtype bfloat16 --kv-cache-gb "${KV_GB:-40}" --max-num-seqs 32 --log-level warning \
    > "$OUT/server_$GROUP.log" 2>&1 &
SERVER=$!
for _ in $(seq 180); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; kill -0 $SERVER || break; sleep 1; done
timeout -k 5 "$SECONDS_LEFT" python3 bench/evals/ruler.py --url http://127.0.0.1:$PORT --tokenizer "$BASE" \
    --tasks all --lengths "$LENGTHS" --samples "$SAMPLES" "${opts[@]}" --api chat --concurrency 32 --jobs 12 \
    --samples-dir /tmp/.samples --resume --out "$STATE" 2>&1 | grep -v "^\[transformers\]" | tail -30
kill $SERVER; wait $SERVER
ls -la "$OUT"
