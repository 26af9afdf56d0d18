#!/usr/bin/env bash
# Copy a checkpoint trained by bench/train_default.sh into the bundled default, its evidence into bench/results,
# and write the default checkpoint's README (provenance + numbers).
#
#   bash bench/install_default.sh OUT_DIR [SERVE_LIGHTHOUSE_LAYERS]
#
# SERVE_LIGHTHOUSE_LAYERS (e.g. 3,4): the layers that run Lighthouse when the checkpoint serves (sparse prefill);
# every other layer is written to config.json's full_attn_layers. Without it the training layers are kept. Choose
# them with bench/sparse_layers_eval.py: after the dense tail, a small model may keep retrieval only when its early
# layers prefill densely. With a layer set given, the passkey evaluation is re-run on the installed checkpoint
# (GPU if there is one: seconds; CPU: ~15 minutes), since OUT_DIR/passkey.json measured the training layers.
set -euo pipefail
OUT="${1:?usage: bash bench/install_default.sh OUT_DIR [SERVE_LIGHTHOUSE_LAYERS]}"
LAYERS="${2:-}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
DEST=lighthouse/assets/default-checkpoint
rm -f "$DEST"/*
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json \
         generation_config.json metrics.jsonl train_config.json loss.png; do
    cp "$OUT/$f" "$DEST/$f"
done
mkdir -p bench/results
cp "$OUT/loss.png" bench/results/default_checkpoint_loss.png
[ -f "$OUT/train.log" ] && cp "$OUT/train.log" bench/results/default_checkpoint_train.log
if [ -n "$LAYERS" ]; then
    "$PY" - "$DEST/config.json" "$LAYERS" <<'PY'
import json, sys
path, layers = sys.argv[1], sorted({int(x) for x in sys.argv[2].split(",")})
cfg = json.load(open(path))
n = cfg["num_hidden_layers"]
if any(not 0 <= i < n for i in layers):
    raise SystemExit(f"serving layers {layers} must lie in 0..{n - 1}")
cfg["lighthouse"]["full_attn_layers"] = [i for i in range(n) if i not in layers]
json.dump(cfg, open(path, "w"), indent=2)
print(f"config.json: Lighthouse on layers {layers}, dense {cfg['lighthouse']['full_attn_layers']}")
PY
    "$PY" bench/passkey_eval.py --checkpoint "$DEST" --contexts 2048 4096 8192 16384 --trials 4 \
        --note "bundled default checkpoint, served with Lighthouse on layers $LAYERS" --out bench/results/passkey_default.json \
        --overwrite  # installing a checkpoint replaces its recorded run on purpose
else
    cp "$OUT/passkey.json" bench/results/passkey_default.json
fi
"$PY" - "$DEST" "$OUT" <<'PY'
import json, sys
from pathlib import Path
dest, out = Path(sys.argv[1]), Path(sys.argv[2])
recs = [json.loads(l) for l in (dest / "metrics.jsonl").read_text().splitlines() if l.strip()]
train = [r for r in recs if r["type"] == "train"]
evals = [r for r in recs if r["type"] == "eval"]
switch = next((r["step"] for r in recs if r["type"] == "phase"), None)
pk = json.loads(Path("bench/results/passkey_default.json").read_text())
trained_pk = json.loads((out / "passkey.json").read_text())
cfg = json.loads((dest / "config.json").read_text())
trained_cfg = json.loads((out / "config.json").read_text())
lh, n = cfg["lighthouse"], cfg["num_hidden_layers"]
serve = [i for i in range(n) if i not in lh["full_attn_layers"]]
trained = [i for i in range(n) if i not in trained_cfg["lighthouse"]["full_attn_layers"]]
rows = "\n".join(f"| {r['context']} | {r['prefill']} | {r['lighthouse_layers'] or '- (dense)'} | {r['accuracy']:.2f} |"
                 for r in pk["results"])
if serve != trained:
    rows += "\n" + "\n".join(f"| {r['context']} | {r['prefill']} | {r['lighthouse_layers']} (the training layers; {trained_pk['device']}) | {r['accuracy']:.2f} |"
                             for r in trained_pk["results"] if r["prefill"] == "sparse" and r["lighthouse_layers"])
size = (dest / "model.safetensors").stat().st_size / 2**20
tc = json.loads((dest / "train_config.json").read_text())
(dest / "README.md").write_text(f"""# Bundled default checkpoint

Trained by `bash bench/train_default.sh OUT` (`lighthouse train --preset default`, seed {tc['seed']}) on {trained_pk['device']}:
{train[-1]['step']} steps, {train[-1]['tokens']:,} tokens; Lighthouse stage (L{lh['levels']} p{lh['pooling_factor']} k{lh['topk']} on layers
{trained}) until step {switch}, then the dense tail on the same optimizer state; installed by
`bash bench/install_default.sh OUT{' ' + ','.join(map(str, serve)) if serve != trained else ''}`.
Model: {n} layers, hidden {cfg['hidden_size']}, heads {cfg['num_attention_heads']}/{cfg['num_key_value_heads']}, byte vocabulary, {cfg['max_position_embeddings']} positions; model.safetensors {size:.1f} MB.
Final train loss {train[-1]['loss']:.4f}; held-out eval loss {evals[-1]['eval_loss']:.4f}, teacher-forced answer accuracy {evals[-1]['answer_acc']:.2f}.
`metrics.jsonl`, `loss.png` and `train_config.json` are that run's.
{'' if serve == trained else f'''
Served with Lighthouse on layers {serve} (config.json's `full_attn_layers` = {lh['full_attn_layers']}): with the training
layers under Lighthouse at prefill this checkpoint loses passkey retrieval (measured by bench/sparse_layers_eval.py;
see the last rows below; our reading: the retrieval circuit formed in the dense tail and needs full-resolution
attention in the early layers).
'''}
Passkey retrieval (bench/passkey_eval.py, greedy 5 digits, {pk['trials']} prompts x {len(pk['depths'])} depths per row, on {pk['device']} ({pk['dtype']});
sparse = Lighthouse prefill with a {next(r['dense_tail_tokens'] for r in pk['results'] if r['prefill'] == 'sparse')}-token dense tail; below the checkpoint's min_seq_len ({lh['min_seq_len']}) prefill is dense):

| context | prefill | Lighthouse layers | accuracy |
|---|---|---|---|
{rows}
""")
print(f"installed into {dest}; README written")
PY
