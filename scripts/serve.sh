#!/usr/bin/env bash
# The README's serve command: set up the venv (first run) and start `lighthouse serve` on the bundled checkpoint.
# Extra arguments go to `lighthouse serve` (see `lighthouse serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# (re)install when something the README uses is missing, or the venv predates the `serve` entry point
if ! "$PY" -c "import fastapi, openai, lighthouse_client
from lighthouse.cli import registered_commands
assert 'serve' in registered_commands()" >/dev/null 2>&1; then
    install_project
    say "done; activate the venv (source $VENV/bin/activate) to use lighthouse and python with these packages"
fi
exec "$VENV/bin/lighthouse" serve "$@"
