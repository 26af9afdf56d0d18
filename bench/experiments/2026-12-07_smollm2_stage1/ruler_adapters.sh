#!/usr/bin/env bash
# Device call (same hold, after device_recipe.sh): RULER at one length for each adapter folder given, through the
# server over HTTP, to pick the stage-1 RoPE variant (the issue: keep the better by RULER at 64K).
#   bash ruler_adapters.sh LENGTH SAMPLES PREFILLS ADAPTER_DIR...     e.g. 65536 50 sparse,dense /tmp/recipe/s1_32k-*
# Samples: generated beforehand (`python -m bench.evals.ruler --generate-only --samples-dir .samples ...`, carried
# as .stage4/samples_16k_64k.tar.xz) or generated here on the machine's CPUs (--jobs 12).
set -uo pipefail
LENGTH="$1" SAMPLES="$2" PREFILLS="$3"; shift 3
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
for f in .stage4/*.tar.xz .stage5/*.tar.xz .stage6/*.tar.xz; do  # each staged archive once per machine
    [ -f "$f" ] && [ ! -f "/tmp/.unpacked_$(basename "$f")" ] && tar -C /tmp -xJf "$f" && touch "/tmp/.unpacked_$(basename "$f")"
done
export LIGHTHOUSE_MODELS_DIR=/tmp/models
BASE=/tmp/models/smollm2-135m-instruct
PORT=8032
for adapter in "$@"; do
    name=$(basename "$adapter")
    python3 -m lighthouse_server.cli --checkpoint "$adapter" --served-model-name smollm2-135m-instruct --port $PORT \
        --device cuda --dtype bfloat16 --kv-cache-gb 40 --max-num-seqs 32 --log-level warning > "$OUT/server_$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 180); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; kill -0 $SERVER || break; sleep 1; done
    timeout -k 5 "${RULER_TIMEOUT:-400}" python3 bench/evals/ruler.py --url http://127.0.0.1:$PORT --tokenizer "$BASE" \
        --tasks all --lengths "$LENGTH" --samples "$SAMPLES" --prefill "$PREFILLS" --dense-tail 64 --decode dense \
        --api chat --concurrency 32 --jobs 12 --samples-dir /tmp/.samples --resume --out "$OUT/ruler_$name.json" 2>&1 \
        | grep -v "^\[transformers\]" | tail -30
    kill $SERVER; wait $SERVER
done
