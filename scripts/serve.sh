#!/usr/bin/env bash
# The README's serve command: set up the venv (first run) and start `lighthouse serve` on the bundled checkpoint.
# Extra arguments go to `lighthouse serve` (see `lighthouse serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# (re)install when the project is missing or installed before `serve` was registered as an entry point
if ! "$PY" -c "import fastapi; from lighthouse.cli import registered_commands as r; assert 'serve' in r()" >/dev/null 2>&1; then
    ensure_torch
    "$PY" -m pip install -q -e .
fi
exec "$VENV/bin/lighthouse" serve "$@"
