#!/usr/bin/env bash
# Copy a checkpoint trained by bench/train_default.sh into the bundled default and its evidence into bench/results.
#   bash bench/install_default.sh OUT_DIR
set -euo pipefail
OUT="${1:?usage: bash bench/install_default.sh OUT_DIR}"
cd "$(dirname "$0")/.."
DEST=lighthouse/assets/default-checkpoint
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
    cp "$OUT/$f" "$DEST/$f"
done
cp "$OUT/metrics.jsonl" "$OUT/train_config.json" "$DEST/"
cp "$OUT/loss.png" "$DEST/loss.png"
mkdir -p bench/results
cp "$OUT/loss.png" bench/results/default_checkpoint_loss.png
cp "$OUT/passkey.json" bench/results/passkey_default.json
[ -f "$OUT/train.log" ] && cp "$OUT/train.log" bench/results/default_checkpoint_train.log
echo "installed $OUT into $DEST; update $DEST/README.md (provenance) before committing"
