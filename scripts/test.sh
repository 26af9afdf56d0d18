#!/usr/bin/env bash
# The README's test command: set up the venv (first run), lint (ruff; mypy --strict on the SDK), run the suite
# (tests/ and clients/python/tests/). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_torch
"$PY" -m pip install -q -e ".[test]"
"$PY" -m pip install -q -e clients/python
echo "lint: ruff check . && mypy --strict (clients/python)"
"$VENV/bin/ruff" check --quiet .
"$PY" -m mypy --no-error-summary --config-file clients/python/pyproject.toml clients/python/lighthouse_client
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
"$PY" -m pytest -q -ra "$@"
