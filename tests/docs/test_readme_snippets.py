"""The README's "Serve your own model" commands and its five-line SDK example run as written.

The snippets are read from README.md (the shell block after the `serve-your-own-model` marker, the Python block after
the `sdk-five-lines` marker), so the test breaks when the README drifts. The commands run against a tiny random
checkpoint from `make_checkpoint`: `lighthouse serve --checkpoint DIR` as a subprocess on a free port (its settings
beyond the command line come from LIGHTHOUSE_* variables, as a deployment's would), polled until /ready, asked once
with the model id /v1/models reports, stopped with SIGTERM; `lighthouse generate` and `lighthouse models list` to
completion. The SDK example runs against a loopback server on the same kind of checkpoint."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

# Commands of the section that the test does not run (each is run elsewhere), and where
NOT_RUN_HERE = {
    ("convert", "gguf"): "tests/convert/test_convert_gguf.py converts GGUF files through the CLI",
    ("serve", "--model"): "tests/test_readme_quickstart.py serves smollm2-135m-instruct (slow: fetches the model)",
}


def block_after(marker: str, lang: str) -> str:
    """The first ```lang block after the HTML comment that starts with `marker`."""
    start = README.index(f"<!-- {marker}")
    match = re.compile(rf"^```{lang}\n(.*?)^```", re.S | re.M).search(README, start)
    assert match, f"no {lang} block after the {marker} marker"
    return match.group(1)


def serve_own_model_commands() -> list[list[str]]:
    """The `lighthouse ...` command lines of the "Serve your own model" block, as argv (comments dropped)."""
    section = README[README.index("## Serve your own model"):]
    assert section.index("<!-- serve-your-own-model") < section.index("\n## "), "the marker left its section"
    commands = [shlex.split(line, comments=True) for line in block_after("serve-your-own-model", "bash").splitlines()]
    return [c for c in commands if c]


def run_lighthouse(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lighthouse.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                          **kw)  # fmt: skip


def server_env(port: int) -> dict[str, str]:
    env = {**os.environ, "LIGHTHOUSE_PORT": str(port), "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_DTYPE": "float32",
           "LIGHTHOUSE_KV_CACHE_GB": "0.25", "LIGHTHOUSE_LOG_LEVEL": "warning"}
    for name in ("LIGHTHOUSE_CHECKPOINT", "LIGHTHOUSE_MODEL", "LIGHTHOUSE_API_KEY", "LIGHTHOUSE_SERVED_MODEL_NAME"):
        env.pop(name, None)  # what the command line says, nothing else
    return env


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, make_checkpoint) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("own") / "my-llama")


def test_the_section_says_how_to_serve_each_kind_of_model():
    commands = [" ".join(c) for c in serve_own_model_commands()]
    assert "lighthouse serve --checkpoint DIR" in commands
    assert "lighthouse convert gguf FILE --out DIR" in commands
    assert "lighthouse models list" in commands and any(c.startswith("lighthouse serve --model ") for c in commands)
    section = README[README.index("## Serve your own model"):README.index("\n## ", README.index("## Serve your own"))]
    assert "hub id is not downloaded" in section and "download" in section  # ... into a folder first


def test_every_command_of_the_section_is_run_here_or_named_where_it_is():
    runnable = {("serve", "--checkpoint"), ("generate", "--checkpoint"), ("models", "list")}
    for argv in serve_own_model_commands():
        assert argv[0] == "lighthouse", argv
        key = (argv[1], argv[2])
        assert key in runnable or key in NOT_RUN_HERE, f"a new command in the README section: {argv}"


@pytest.mark.timeout(180)
def test_serve_checkpoint_dir_answers_a_request_and_stops_on_sigterm(checkpoint, free_port, tmp_path, serve_process):
    (argv,) = [c for c in serve_own_model_commands() if c[1:3] == ["serve", "--checkpoint"]]
    port = free_port()
    args = [str(checkpoint) if a == "DIR" else a for a in argv[1:]]
    with serve_process(args, port=port, env=server_env(port), log=tmp_path / "serve.log", cwd=ROOT) as server:
        model = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"][0]["id"]
        r = httpx.post(f"{server.url}/v1/completions", json={"model": model, "prompt": "Once upon a time",
                                                             "max_tokens": 4, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4
    assert server.returncode == 0, server.log_tail()


@pytest.mark.timeout(180)
def test_generate_checkpoint_dir_prints_a_completion(checkpoint):
    (argv,) = [c for c in serve_own_model_commands() if c[1:3] == ["generate", "--checkpoint"]]
    out = run_lighthouse([str(checkpoint) if a == "DIR" else a for a in argv[1:]] + ["--device", "cpu"], timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip(), "generate printed nothing"


@pytest.mark.timeout(120)
def test_models_list_names_the_known_models():
    (argv,) = [c for c in serve_own_model_commands() if c[1:3] == ["models", "list"]]
    out = run_lighthouse(argv[1:], timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    (served,) = [c for c in serve_own_model_commands() if c[1:3] == ["serve", "--model"]]
    assert served[3] in out.stdout, out.stdout  # the model the README serves is one `models list` names


def sdk_snippet() -> str:
    return block_after("sdk-five-lines", "python")


def test_the_sdk_example_is_five_lines_and_takes_the_model_from_the_server():
    code = sdk_snippet()
    assert len([line for line in code.splitlines() if line.strip()]) == 5, code
    assert "model=" not in code and "lighthouse-default" not in code  # the SDK asks /v1/models


@pytest.mark.timeout(120)
def test_the_sdk_example_answers_against_a_server(tmp_path, monkeypatch, capsys, make_checkpoint, loopback_server,
                                                   settings_for):
    code = sdk_snippet()
    assert 'base_url="http://127.0.0.1:8000"' in code
    ckpt = make_checkpoint(tmp_path / "ckpt")
    with loopback_server(settings_for(ckpt)) as server:
        monkeypatch.chdir(tmp_path)
        for name in ("LIGHTHOUSE_API_KEY", "LIGHTHOUSE_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
        (tmp_path / "report.txt").write_text("The report was signed by Ada Lovelace on 10 December 1842.\n" * 20)
        exec(compile(code.replace("http://127.0.0.1:8000", server.url), "README sdk-five-lines", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.strip(), "the example printed no answer"
