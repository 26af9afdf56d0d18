#!/usr/bin/env bash
# The README's test command: set up the venv (first run) and run the suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_torch
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q -e clients/python
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
"$PY" -m pytest -q -ra "$@"
