#!/usr/bin/env bash
# The README's serve command: set up a venv (first run only) and start `lighthouse serve` on the bundled checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LIGHTHOUSE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import lighthouse, fastapi" >/dev/null 2>&1; then
    "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$PY" -m pip install -q "torch==2.13.0" 2>/dev/null || true
    "$PY" -m pip install -q -e .
fi
exec "$VENV/bin/lighthouse" serve "$@"
