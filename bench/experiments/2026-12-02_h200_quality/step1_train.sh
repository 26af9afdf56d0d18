#!/usr/bin/env bash
# Device call 1: stage 2 of the default checkpoint (recipes/train_long.sh from the bundled 16K checkpoint), then a
# quick passkey check at 16K / 128K / 512K. Output under $OUT: ck_long.tar (the checkpoint + its metrics), train.log,
# quick/retrieval.json.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=/tmp/ck_long
start=$(date +%s)
timeout -k 10 440 bash recipes/train_long.sh lighthouse/assets/default-checkpoint "$CK" "$@"
echo "train rc=$? after $(( $(date +%s) - start ))s"
cp "$CK/train.log" "$OUT/" 2>/dev/null
( cd "$CK" && tar -cf "$OUT/ck_long.tar" config.json model.safetensors tokenizer.json tokenizer_config.json \
    special_tokens_map.json generation_config.json metrics.jsonl train_config.json loss.png )
left=$(( 585 - ($(date +%s) - start) ))
echo "quick check with ${left}s left"
[ "$left" -gt 30 ] && timeout -k 5 "$left" python3 -m bench.evals.quality_bench --checkpoint "$CK" \
    --contexts 16384 131072 524288 --tasks passkey --formats completion documents_ask --prefills dense sparse \
    --tails 64 --decodes dense --trials 8 --layers-at 0 --out "$OUT/quick"
echo "done after $(( $(date +%s) - start ))s"
