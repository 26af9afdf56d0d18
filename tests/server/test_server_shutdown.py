"""`lighthouse serve` as a user runs it: env-var settings, SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx


def test_sigterm_finishes_in_flight_streams_then_exits_zero(tmp_path, make_checkpoint, free_port):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    port = free_port()
    env = {**os.environ, "LIGHTHOUSE_API_KEY": "k", "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_KV_CACHE_GB": "0.25",
           "LIGHTHOUSE_DRAIN_TIMEOUT_S": "120", "LIGHTHOUSE_QUEUE_FULL_STATUS": "503",
           "LIGHTHOUSE_CORS_ORIGINS": "https://a.example,https://b.example"}
    proc = subprocess.Popen([sys.executable, "-m", "lighthouse.cli", "serve", "--checkpoint", str(ckpt), "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not become ready"
            time.sleep(0.2)
        # the key came from the environment
        assert httpx.get(url + "/v1/models").status_code == 401
        body = {"prompt": "drain me", "max_tokens": 100, "temperature": 0, "stream": True, "ignore_eos": True}
        finish = None
        with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": "Bearer k"},
                          timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")
            proc.send_signal(signal.SIGTERM)  # mid-stream
            for line in lines:
                if line.startswith("data: {"):
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
        assert finish == "length"  # the in-flight request ran to completion
        # exactly 0: uvicorn re-raises SIGTERM after its graceful shutdown, which alone would exit -15 (143)
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read()
        assert "Traceback" not in log and "Finished server process" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
