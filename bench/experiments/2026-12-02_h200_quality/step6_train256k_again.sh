#!/usr/bin/env bash
# Not run yet: stage 3 again, now that the trainer's time budget no longer reserves evals for the --max-steps cap
# (step2 got 7 steps from it). From the bundled checkpoint (stage 2), the stage-2 recipe at 256K-token sequences,
# ~45 steps in a 200 s budget (2.7 s per Lighthouse step, 3.9 per dense step measured there), evals every 10 steps
# reporting dense_answer_acc too; then the quick check at 256K / 512K in both formats. Compare with stage 2's
# 512K: completion 0.45 (20 prompts), documents_ask 0.75 (8). Install only if 16K-128K stay at 1.00.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=/tmp/ck_256k
start=$(date +%s)
timeout -k 10 300 bash bench/train_long.sh lighthouse/assets/default-checkpoint "$CK" --seq-len 262144 --batch-size 2 \
    --micro-batch-size 1 --lr 3e-4 --warmup-steps 5 --max-steps 1000 --time-budget-s 200 --eval-every 10 \
    --eval-samples 4 --save-every 20
cp "$CK/train.log" "$OUT/train_256k.log" 2>/dev/null
( cd "$CK" && tar -cf "$OUT/ck_256k.tar" config.json model.safetensors tokenizer.json tokenizer_config.json \
    generation_config.json metrics.jsonl train_config.json loss.png )
left() { echo $(( 585 - ($(date +%s) - start) )); }
timeout -k 5 "$(left)" python3 bench/quality_bench.py --checkpoint "$CK" --contexts 524288 262144 131072 16384 \
    --tasks passkey --formats completion documents_ask --prefills dense sparse --tails 64 --decodes dense --trials 8 \
    --layers-at 0 --out "$OUT/quick"
