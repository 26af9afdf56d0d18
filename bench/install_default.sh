#!/usr/bin/env bash
# Copy a checkpoint trained by bench/train_default.sh into the bundled default, its evidence into bench/results,
# and write the default checkpoint's README (provenance + numbers).
#   bash bench/install_default.sh OUT_DIR
set -euo pipefail
OUT="${1:?usage: bash bench/install_default.sh OUT_DIR}"
cd "$(dirname "$0")/.."
DEST=lighthouse/assets/default-checkpoint
rm -f "$DEST"/*
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json \
         generation_config.json metrics.jsonl train_config.json loss.png; do
    cp "$OUT/$f" "$DEST/$f"
done
mkdir -p bench/results
cp "$OUT/loss.png" bench/results/default_checkpoint_loss.png
cp "$OUT/passkey.json" bench/results/passkey_default.json
[ -f "$OUT/train.log" ] && cp "$OUT/train.log" bench/results/default_checkpoint_train.log
"${PYTHON:-python}" - "$DEST" <<'PY'
import json, sys
from pathlib import Path
dest = Path(sys.argv[1])
recs = [json.loads(l) for l in (dest / "metrics.jsonl").read_text().splitlines() if l.strip()]
train = [r for r in recs if r["type"] == "train"]
evals = [r for r in recs if r["type"] == "eval"]
switch = next((r["step"] for r in recs if r["type"] == "phase"), None)
pk = json.loads(Path("bench/results/passkey_default.json").read_text())
cfg = json.loads((dest / "config.json").read_text())
rows = "\n".join(f"| {r['context']} | {r['prefill']} | {r['accuracy']:.2f} |" for r in pk["results"])
size = (dest / "model.safetensors").stat().st_size / 2**20
(dest / "README.md").write_text(f"""# Bundled default checkpoint

Trained by `bash bench/train_default.sh OUT` (`lighthouse train --preset default`, seed 1234) on {pk['device']}:
{train[-1]['step']} steps, {train[-1]['tokens']:,} tokens; Lighthouse stage (L{cfg['lighthouse']['levels']} p{cfg['lighthouse']['pooling_factor']} k{cfg['lighthouse']['topk']},
dense layers {cfg['lighthouse']['full_attn_layers']}) until step {switch}, then the dense tail on the same optimizer state.
Model: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, byte vocabulary, {cfg['max_position_embeddings']} positions; model.safetensors {size:.1f} MB.
Final train loss {train[-1]['loss']:.4f}; held-out eval loss {evals[-1]['eval_loss']:.4f}, teacher-forced answer accuracy {evals[-1]['answer_acc']}.
`metrics.jsonl`, `loss.png` and `train_config.json` are that run's.

Passkey retrieval (bench/passkey_eval.py, greedy 5 digits, {pk['trials']} prompts x {len(pk['depths'])} depths per row;
sparse = Lighthouse prefill with a {pk['results'][-1]['dense_tail_tokens']}-token dense tail):

| context | prefill | accuracy |
|---|---|---|
{rows}
""")
print(f"installed into {dest}; README written")
PY
