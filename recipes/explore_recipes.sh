#!/usr/bin/env bash
# Train several variants of the default recipe side by side, one per GPU, then run the passkey evaluation on each.
#
#   bash recipes/explore_recipes.sh OUT_DIR SECONDS "NAME:FLAGS" "NAME:FLAGS" ...
#
# Each variant runs `python -m lighthouse.train --preset default` with FLAGS added, on its own GPU
# (CUDA_VISIBLE_DEVICES = its position), with a training time budget of SECONDS; then bench/evals/passkey_eval.py at
# 2K-16K. OUT_DIR/NAME.tar.gz holds the checkpoint (bf16), metrics.jsonl, loss.png, train.log and passkey.json;
# OUT_DIR/summary.txt lists final eval loss, answer accuracy and passkey accuracy per variant.
set -uo pipefail
OUT="${1:?usage: bash recipes/explore_recipes.sh OUT_DIR SECONDS NAME:FLAGS ...}"; SECS="${2:?}"; shift 2
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
i=0
for spec in "$@"; do
    name="${spec%%:*}"; flags="${spec#*:}"
    (
        export CUDA_VISIBLE_DEVICES=$i
        d="$work/$name"; mkdir -p "$d"
        # shellcheck disable=SC2086
        "$PY" -m lighthouse.train --preset default --out "$d" --no-resume --no-progress --save-dtype bf16 \
            --time-budget-s "$SECS" $flags > "$d/train.log" 2>&1
        "$PY" -m bench.evals.passkey_eval --checkpoint "$d" --contexts 2048 4096 8192 16384 --trials 2 \
            --note "explore_recipes $name: $flags" --out "$d/passkey.json" --overwrite >> "$d/train.log" 2>&1
        tar -C "$work" -czf "$OUT/$name.tar.gz" --exclude=checkpoints "$name"
    ) &
    i=$((i + 1))
done
wait
for spec in "$@"; do
    name="${spec%%:*}"
    {
        echo "== $name: ${spec#*:}"
        grep -E "time budget|eval loss|^done" "$work/$name/train.log" | tail -n 6
        grep -A 12 "^ *context" "$work/$name/train.log" | head -n 10
    } >> "$OUT/summary.txt"
done
cat "$OUT/summary.txt"
