#!/usr/bin/env bash
# Device call 2: stage 3 from stage 2 (runs/ck_long, carried): the same recipe at 256K-token sequences (distances
# that stage 2's 64K never showed: its passkeys failed only when the needle sat > ~256K tokens before the question),
# then the quick check at 256K / 512K, then the small contexts of the retrieval table and the layer table at 128K.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=/tmp/ck_256k
start=$(date +%s)
timeout -k 10 260 bash recipes/train_long.sh runs/ck_long "$CK" --seq-len 262144 --batch-size 2 --micro-batch-size 1 \
    --lr 5e-4 --warmup-steps 5 --time-budget-s 170 --eval-every 20 --eval-samples 4 --save-every 20
echo "train rc=$? after $(( $(date +%s) - start ))s"
cp "$CK/train.log" "$OUT/train_256k.log" 2>/dev/null
( cd "$CK" && tar -cf "$OUT/ck_256k.tar" config.json model.safetensors tokenizer.json tokenizer_config.json \
    generation_config.json metrics.jsonl train_config.json loss.png )
left() { echo $(( 590 - ($(date +%s) - start) )); }
timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" --contexts 524288 262144 --tasks passkey \
    --formats completion documents_ask --prefills dense sparse --tails 64 --decodes dense --trials 8 --layers-at 0 \
    --out "$OUT/quick"
echo "quick check done after $(( $(date +%s) - start ))s"
[ "$(left)" -gt 30 ] && timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" \
    --contexts 16384 65536 131072 --trials 20 --layers-at 131072 --out "$OUT/table"
echo "done after $(( $(date +%s) - start ))s"
