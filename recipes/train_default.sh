#!/usr/bin/env bash
# The recipe for the bundled default checkpoint (lighthouse/assets/default-checkpoint/).
#
#   bash recipes/train_default.sh OUT_DIR [extra `lighthouse train` flags]
#
# One H200 (or any CUDA GPU), about 9 minutes in all: `lighthouse train --preset default` (fixed seed 1234;
# model: 6 layers, hidden 256, GQA 4/2, byte vocabulary, 16K context; data: 95% synthetic retrieval tasks
# (passkey 3x, key-value; fillers: `echo` lines block|block and `copy` sentences repeated at log-uniform distances,
# which teach copying, plus `repeat` and `sentences`; a curriculum packs many short documents into the sequences of
# the first 80% of steps; answer tokens weigh 10x in the loss) + 5% Python stdlib source read from the local install;
# Lighthouse L3 p4 k256 on layers 1-4 for the first 40% of steps, then the dense tail on the same optimizer state;
# AdamW at a constant 2e-3 after warmup, as in the paper; bf16 autocast; bf16 weights saved). The preset's time
# budget (455 s) sets the step count after the first steps are timed (3,240 on the H200 on 2026-11-28), and the
# chosen count is written to OUT_DIR/metrics.jsonl. Then the passkey evaluation (dense vs sparse prefill at 2K-16K)
# runs on the result.
#
# OUT_DIR afterwards: config.json, model.safetensors, tokenizer*.json, generation_config.json (the checkpoint),
# metrics.jsonl, loss.png, train_config.json, checkpoints/ (resumable state), passkey.json, train.log.
# To bundle it (Lighthouse on layers 3-4 when serving: see bench/evals/sparse_layers_eval.py and the checkpoint's README):
#   bash recipes/train_default.sh OUT && bash recipes/install_default.sh OUT 3,4
set -euo pipefail
OUT="${1:?usage: bash recipes/train_default.sh OUT_DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1
start=$(date +%s)
"$PY" -m lighthouse.train --preset default --out "$OUT" --no-resume --no-progress "${@:2}" 2>&1 | tee "$OUT/train.log"
"$PY" -m bench.evals.passkey_eval --checkpoint "$OUT" --contexts 2048 4096 8192 16384 --trials 4 \
    --note "default checkpoint: recipes/train_default.sh (preset default, seed 1234)" --out "$OUT/passkey.json" --overwrite 2>&1 | tee -a "$OUT/train.log"
echo "total $(( $(date +%s) - start ))s; checkpoint, metrics.jsonl, loss.png and passkey.json are in $OUT"
