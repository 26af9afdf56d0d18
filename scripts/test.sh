#!/usr/bin/env bash
# The README's test command: set up a venv (CPU torch from the local wheel when present) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LIGHTHOUSE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: the CPU wheel on this machine's disk if it is there, else whatever the range allows.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.6,<2.15"
fi
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q -e clients/python 2>/dev/null || true
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
"$PY" -m pytest -q -ra "$@"
