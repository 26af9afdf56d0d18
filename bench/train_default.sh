#!/usr/bin/env bash
# The recipe for the bundled default checkpoint (lighthouse/assets/default-checkpoint/; the one bundled now was made
# by an earlier version of this recipe, recorded in its train_config.json, and does not retrieve passkeys).
#
#   bash bench/train_default.sh OUT_DIR
#
# One H200 (or any CUDA GPU), about 9 minutes in all: `lighthouse train --preset default` (fixed seed 1234;
# model: 6 layers, hidden 256, GQA 4/2, byte vocabulary, 16K context; data: 95% synthetic retrieval tasks
# (passkey 3x, key-value; fillers: `echo` lines block|block that train copying, `repeat`, `sentences`; a curriculum
# packs many short documents into the early sequences; answer tokens weigh 10x in the loss) + 5% Python stdlib
# source read from the local install; Lighthouse L3 p4 k256 on layers 1-4, then a dense tail over the second half of
# the steps on the same optimizer state; bf16 autocast). The preset's time budget (500 s) sets the step count after
# the first steps are timed, and the chosen count is written to OUT_DIR/metrics.jsonl. Then the passkey evaluation (dense vs sparse
# prefill at 2K-16K) runs on the result.
#
# OUT_DIR afterwards: config.json, model.safetensors, tokenizer*.json, generation_config.json (the checkpoint),
# metrics.jsonl, loss.png, train_config.json, checkpoints/ (resumable state), passkey.json, train.log.
# To bundle it: bash bench/train_default.sh OUT && bash bench/install_default.sh OUT
set -euo pipefail
OUT="${1:?usage: bash bench/train_default.sh OUT_DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONUNBUFFERED=1
start=$(date +%s)
"$PY" -m lighthouse.train --preset default --out "$OUT" --no-resume --no-progress "${@:2}" 2>&1 | tee "$OUT/train.log"
"$PY" bench/passkey_eval.py --checkpoint "$OUT" --contexts 2048 4096 8192 16384 --trials 4 \
    --note "default checkpoint: bench/train_default.sh (preset default, seed 1234)" --out "$OUT/passkey.json" 2>&1 | tee -a "$OUT/train.log"
echo "total $(( $(date +%s) - start ))s; checkpoint, metrics.jsonl, loss.png and passkey.json are in $OUT"
