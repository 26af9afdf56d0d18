#!/usr/bin/env bash
# Device call after run_table.sh (same held machine: the converted base in /tmp/models, wheels in /tmp/site):
# stage 1 of the SmolLM2 512K recipe twice at equal tokens, once per Lighthouse RoPE variant, and the training
# throughput (Lighthouse vs dense) at 64K and 128K. Adapters and logs come back in $OUT.
#   bash run_stage1.sh STEPS SEQ_LEN
set -uo pipefail
STEPS="${1:-40}" SEQ="${2:-32768}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
BASE=/tmp/models/smollm2-135m-instruct
[ -d "$BASE" ] || { echo "no converted base in $BASE: run run_table.sh first in this hold"; exit 1; }
timeout 150 python3 bench/experiments/2026-12-07_smollm2_stage1/time_train_step.py "$BASE" "$OUT/train_throughput.json" \
    2>&1 | grep -v Warn | tail -8
for variant in before_pool after_select; do
    run=/tmp/runs/s1_$variant
    start=$(date +%s)
    python3 -m lighthouse.train --init-from "$BASE" --out "$run" --longdoc .corpus --seq-len "$SEQ" \
        --max-position-embeddings 524288 --levels 3 --pooling-factor 4 --topk 1024 --full-attn-layers 0,1,28,29 \
        --min-seq-len 16384 --lighthouse-rope "$variant" --lora-rank 32 --lora-alpha 64 \
        --batch-size 4 --micro-batch-size 1 --lr 4e-4 --warmup-steps 5 --decay cosine --weight-decay 0 \
        --max-steps "$STEPS" --dense-tail-steps 0 --answer-loss-weight 5 --activation-checkpointing \
        --eval-every "$STEPS" --eval-samples 8 --log-every 5 --save-every 20 --keep-last 1 --seed 1234 \
        --no-progress 2>&1 | grep -v "Warn\|warn(" | tail -14
    echo "stage1 $variant took $(( $(date +%s) - start )) s"
    mkdir -p "$OUT/s1_$variant"
    cp "$run"/adapter_config.json "$run"/adapter_model.safetensors "$run"/metrics.jsonl "$OUT/s1_$variant/" 2>/dev/null
done
ls -la "$OUT"/*
