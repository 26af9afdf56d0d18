#!/usr/bin/env bash
# Copy a trained checkpoint into the bundled default (lighthouse/assets/default-checkpoint/) and its training log and
# loss plot into bench/results/default_checkpoint_{train.log,loss.png}.
#
#   bash recipes/install_default.sh OUT_DIR [SERVE_LIGHTHOUSE_LAYERS]
#
# OUT_DIR: the output of recipes/train_long.sh (the current recipe: recipes/train_default.sh, then recipes/train_long.sh
# on its result). The byte tokenizer is written afresh (lighthouse.tokenizer, its chat template inside
# tokenizer_config.json, model_max_length = the checkpoint's positions) rather than copied: transformers 5 saves the
# chat template to a separate chat_template.jinja, which an older transformers would not read.
# SERVE_LIGHTHOUSE_LAYERS (e.g. 3,4): the layers that run Lighthouse when the checkpoint serves; every other layer
# is written to config.json's full_attn_layers. Without it the training layers are kept. Choose them from the layer
# table of bench/evals/quality_bench.py (--layers-at).
# The checkpoint's README.md is kept and edited by hand: update its numbers from bench/evals/quality_bench.py's table.
set -euo pipefail
OUT="${1:?usage: bash recipes/install_default.sh OUT_DIR [SERVE_LIGHTHOUSE_LAYERS]}"
LAYERS="${2:-}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
DEST=lighthouse/assets/default-checkpoint
find "$DEST" -type f ! -name README.md -delete
for f in config.json model.safetensors generation_config.json metrics.jsonl train_config.json loss.png; do
    cp "$OUT/$f" "$DEST/$f"
done
cp "$OUT/loss.png" bench/results/default_checkpoint_loss.png
[ -f "$OUT/train.log" ] && cp "$OUT/train.log" bench/results/default_checkpoint_train.log
"$PY" - "$OUT" "$DEST" "$LAYERS" <<'PY'
import json, sys
from pathlib import Path
from lighthouse.tokenizer import byte_tokenizer_json, write_byte_tokenizer

out, dest, layers = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
theirs = json.loads((out / "tokenizer.json").read_text())
if theirs["model"]["vocab"] != byte_tokenizer_json()["model"]["vocab"]:
    raise SystemExit(f"{out} does not use the byte tokenizer; the bundled default is a byte-level checkpoint")
cfg = json.loads((dest / "config.json").read_text())
write_byte_tokenizer(dest, model_max_length=cfg["max_position_embeddings"])
if layers:
    chosen, n = sorted({int(x) for x in layers.split(",")}), cfg["num_hidden_layers"]
    if any(not 0 <= i < n for i in chosen):
        raise SystemExit(f"serving layers {chosen} must lie in 0..{n - 1}")
    cfg["lighthouse"]["full_attn_layers"] = [i for i in range(n) if i not in chosen]
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
lh = cfg["lighthouse"]
serving = [i for i in range(cfg["num_hidden_layers"]) if i not in lh["full_attn_layers"]]
size = (dest / "model.safetensors").stat().st_size / 2**20
print(f"installed {out} into {dest}: {cfg['max_position_embeddings']} positions, Lighthouse on layers {serving}, "
      f"model.safetensors {size:.1f} MiB; now update {dest}/README.md")
PY
