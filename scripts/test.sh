#!/usr/bin/env bash
# The README's test command: set up the venv (first run), lint (ruff; mypy --strict on the SDK), run the suite
# (tests/ and clients/python/tests/). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
install_project test
say "lint: ruff check . ; mypy --strict clients/python/lighthouse_client"
"$VENV/bin/ruff" check --quiet .
"$PY" -m mypy --no-error-summary --config-file clients/python/pyproject.toml clients/python/lighthouse_client
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
say "tests: pytest (CPU; TRITON_INTERPRET=$TRITON_INTERPRET)"
"$PY" -m pytest -q -ra "$@"
