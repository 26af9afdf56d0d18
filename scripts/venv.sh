#!/usr/bin/env bash
# Sourced by serve.sh and test.sh: make (once) and name the project's venv.
#   VENV: the venv folder (LIGHTHOUSE_VENV or .venv); PY: its python.
# torch goes in first: the CPU wheel on this machine's disk if there is one, else what the range allows.
VENV="${LIGHTHOUSE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
ensure_torch() {
    if ! "$PY" -c "import torch" >/dev/null 2>&1; then
        "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
        "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.6,<2.15"
    fi
}
