#!/usr/bin/env bash
# Device call (run 2026-12-03; it replaced a never-run 256K variant, step6 of 2026-12-02 in git history): stage 3 at
# 512K-token sequences, from the bundled checkpoint (stage 2, trained at 64K), to reach the
# 512K misses (all > 256K tokens back: 256K contexts answer 1.00 from every depth, 512K ones 0.45). The stage-2
# recipe with one 512K sequence per step, lr 3e-4, a 230 s budget (the trainer measures its steps: ~5 s per
# Lighthouse step, ~7 per dense step expected), evals every 10 steps; then the quick check (8 prompts per cell,
# both formats, dense and sparse prefill) at 512K, 256K, 128K, 16K. Install only if 16K-128K stay at 1.00.
set -uo pipefail
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-02_h200_quality/device_env.sh
CK=/tmp/ck_512k
start=$(date +%s)
timeout -k 10 330 bash recipes/train_long.sh lighthouse/assets/default-checkpoint "$CK" --seq-len 524288 --batch-size 1 \
    --micro-batch-size 1 --lr 3e-4 --warmup-steps 4 --max-steps 1000 --dense-tail-fraction 0.25 --time-budget-s 230 \
    --eval-every 10 --eval-samples 2 --save-every 20
cp "$CK/train.log" "$OUT/train_512k.log" 2>/dev/null
( cd "$CK" && tar -cf "$OUT/ck_512k.tar" config.json model.safetensors tokenizer.json tokenizer_config.json \
    generation_config.json metrics.jsonl train_config.json loss.png chat_template.jinja 2>/dev/null )
echo "-- training done at $(( $(date +%s) - start ))s"
left() { echo $(( 585 - ($(date +%s) - start) )); }
timeout -k 5 "$(left)" python3 -m bench.evals.quality_bench --checkpoint "$CK" --contexts 524288 16384 131072 262144 \
    --tasks passkey --formats completion documents_ask --prefills dense sparse --tails 64 --decodes dense --trials 8 \
    --layers-at 0 --out "$OUT/quick" 2>&1 | grep -v "^\[transformers\]"
echo "-- all done at $(( $(date +%s) - start ))s"
