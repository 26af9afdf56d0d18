"""`lighthouse serve` as an operator sees it: SIGTERM in the order load balancers understand (/ready 503 first,
then 503 + Retry-After to new requests, an error event for a stream cut at the drain timeout, one log line, exit
0); the engine thread dying (/health 503, requests in flight get an error, exit 1, no hang); a corrupt or partial
checkpoint refused at startup with a message naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file, save_file

# `lighthouse serve` with a fault planted in the engine: a decode step of a prompt containing DIE raises a CUDA
# error (which leaves a device unusable, so the engine must stop)
DYING_SERVE = """
import sys
from lighthouse.engine.engine import LLMEngine
real = LLMEngine._decode
def _decode(self, batch):
    if any(b"DIE" in bytes(i for i in s.request.prompt_ids if i < 256) for s in batch):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    return real(self, batch)
LLMEngine._decode = _decode
from lighthouse.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def start(ckpt, *flags, port: int, code=None):
    env = {**os.environ, "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_KV_CACHE_GB": "0.25"}
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "lighthouse.cli"]
    proc = subprocess.Popen([*head, "serve", "--checkpoint", str(ckpt), "--port", str(port), *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"server did not become ready: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)


def stop(proc) -> str:
    if proc.poll() is None:
        proc.kill()
    out = proc.stdout.read()
    proc.wait()
    return out


LONG = {"prompt": "long", "max_tokens": 8000, "temperature": 0, "ignore_eos": True, "stream": True}


def test_sigterm_ready_503_first_then_503_with_retry_after_then_an_error_event_then_exit_0(
        ckpt, free_port, wait_until):
    proc, url = start(ckpt, "--shutdown-delay-s", "2", "--drain-timeout-s", "2", port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=30) as c, c.stream("POST", "/v1/completions", json=LONG) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: {")
            proc.send_signal(signal.SIGTERM)
            # 1. /ready turns 503 at once, while everything else is still served (the pre-stop delay)
            assert wait_until(lambda: c.get("/ready").status_code == 503, timeout=1.5)
            r = c.post("/v1/completions", json={"prompt": "still served", "max_tokens": 2})
            assert r.status_code == 200, r.text
            # 2. draining: a new request is told 503 + Retry-After on a connection that is then closed
            with httpx.Client(base_url=url, timeout=10) as fresh:
                assert wait_until(lambda: fresh.post("/v1/completions", json={"prompt": "x"}).status_code == 503,
                                  timeout=4)
                r = fresh.post("/v1/models")
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.headers["connection"] == "close" and r.json()["error"]["code"] == "shutting_down"
            # 3. the long stream is cut at the drain timeout with an error event, then [DONE]
            rest = [line for line in lines if line]
        events = [json.loads(line[6:]) for line in rest if line.startswith("data: {")]
        assert "error" in events[-1] and events[-1]["error"]["code"] == "shutting_down", events[-1]
        assert rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=20) == 0
    finally:
        log = stop(proc)
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    assert log.count("drain timeout") == 1 and "Finished server process" in log, log[-3000:]


def test_the_engine_thread_dying_fails_requests_in_flight_and_exits_1(ckpt, free_port):
    proc, url = start(ckpt, port=free_port(), code=DYING_SERVE)
    try:
        with httpx.Client(base_url=url, timeout=30) as c, c.stream("POST", "/v1/completions", json=LONG) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: {")
            r = c.post("/v1/completions", json={"prompt": "DIE", "max_tokens": 5})
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
            rest = [line for line in lines if line]  # the stream in flight ends with the same error, no hang
        assert json.loads(rest[-2][6:])["error"]["code"] == "engine_dead" and rest[-1] == "data: [DONE]"
        assert proc.wait(timeout=20) == 1
    finally:
        log = stop(proc)
    assert "the engine thread died" in log, log[-3000:]


def test_health_is_503_once_the_engine_thread_died(ckpt, monkeypatch, loopback_server, settings_for, wait_until):
    with loopback_server(settings_for(ckpt)) as server:
        engine = server.engine.engine
        monkeypatch.setattr(engine, "step", lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: unknown")))
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
        assert httpx.get(server.url + "/health").status_code == 503
        assert httpx.get(server.url + "/ready").status_code == 503
        assert wait_until(lambda: server.app.state.lifecycle.fatal is not None, timeout=3)
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"]  # refused at once, never hangs


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-500])


def _drop_tensor(path: Path) -> None:
    state = load_file(path)
    del state["model.norm.weight"]
    save_file(state, path)


CORRUPTIONS = [
    ("config.json", lambda p: p.write_text('{"model_type": "llama", "hidden_size": ')),
    ("config.json", lambda p: p.write_text('["not", "an", "object"]')),
    ("config.json", lambda p: p.unlink()),
    ("model.safetensors", _truncate),
    ("model.safetensors", lambda p: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")),
    ("model.safetensors", lambda p: p.write_bytes(b"")),
    ("model.safetensors", _drop_tensor),
    ("tokenizer.json", lambda p: p.write_text("{ broken")),
    ("tokenizer.json", lambda p: p.write_text('{"model": {"type": "nonsense"}}')),
    ("tokenizer.json", lambda p: p.unlink()),
    ("tokenizer_config.json", lambda p: p.write_text("{ broken")),
    ("generation_config.json", lambda p: p.write_text('{"eos_token_id": "two"}')),
]


@pytest.mark.parametrize("name,corrupt", CORRUPTIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CORRUPTIONS)])
def test_a_corrupt_or_partial_checkpoint_fails_serve_at_startup_naming_the_file(ckpt, tmp_path, capsys, name, corrupt,
                                                                                free_port):
    import argparse

    from lighthouse_server.cli import add_arguments, run

    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    corrupt(bad / name)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--checkpoint", str(bad), "--device", "cpu", "--port", str(free_port())])
    assert run(args) == 1
    err = capsys.readouterr().err
    assert "cannot load the checkpoint" in err and name.split(".")[0] in err, err
    assert "Traceback" not in err


def test_serve_with_a_truncated_checkpoint_exits_at_once_with_one_clear_line(ckpt, tmp_path):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    _truncate(bad / "model.safetensors")
    proc = subprocess.run([sys.executable, "-m", "lighthouse.cli", "serve", "--checkpoint", str(bad), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{bad / 'model.safetensors'} is truncated" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_stream_uvicorn_cancels_at_its_graceful_timeout_logs_one_line_and_ends_with_an_error_event(
        ckpt, caplog, settings_for, wait_until):
    """Plain uvicorn (no drain of ours), a client that stops reading: uvicorn cancels the request at its graceful
    timeout. That is one warning, not a traceback, and the stream's last bytes say why."""
    import logging
    import socket
    import threading

    import uvicorn

    from lighthouse_server.app import create_app

    settings = settings_for(ckpt)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port,
                                           log_level="info", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=60)
    body = json.dumps(LONG)
    with socket.create_connection(("127.0.0.1", settings.port)) as sock, caplog.at_level(logging.INFO):
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n{body}".encode())
        time.sleep(1.5)  # streaming, unread
        server.should_exit = True
        thread.join(60)
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    assert not thread.is_alive()
    last_event = data.rindex(b"data: {")  # (the body is chunked: framing lines between events)
    assert b'"shutting_down"' in data[last_event:] and b"data: [DONE]" in data[last_event:], data[-500:]
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in caplog.records if "cut at shutdown" in r.getMessage()] == [
        "POST /v1/completions cut at shutdown"]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_big_refused_bodies_are_quick_and_their_memory_goes_back(ckpt, free_port, wait_until):
    """Three 60 MiB prompts under the 64 MiB body limit: each refused (it cannot fit the context) in seconds, not
    minutes, and the server's resident memory returns to about where it was (it grew by gigabytes before)."""
    proc, url = start(ckpt, port=free_port())
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            c.post("/v1/completions", json={"prompt": "warm up", "max_tokens": 2})
            idle = _rss_mb(proc.pid)
            body = json.dumps({"prompt": "x" * (60 << 20)}).encode()
            for _ in range(3):
                r = c.post("/v1/completions", content=body, headers={"content-type": "application/json"})
                assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
            assert wait_until(lambda: _rss_mb(proc.pid) < idle + 60, timeout=10), (idle, _rss_mb(proc.pid))
    finally:
        stop(proc)
