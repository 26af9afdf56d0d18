"""Connection limits of `lighthouse serve` itself (the real CLI in a subprocess): an oversized request head is a
431, a head or body that trickles in is cut at its deadline, and other clients are served all the while."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import pytest

from lighthouse_server.connections import MAX_HEADER_BYTES


@pytest.fixture(scope="module")
def server(tiny_checkpoint, serve_process, free_port, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "LIGHTHOUSE_PORT": str(port), "LIGHTHOUSE_DEVICE": "cpu", "LIGHTHOUSE_DTYPE": "float32",
           "LIGHTHOUSE_KV_CACHE_GB": "0.25", "LIGHTHOUSE_LOG_LEVEL": "warning"}
    for name in ("LIGHTHOUSE_MODEL", "LIGHTHOUSE_API_KEY"):
        env.pop(name, None)
    args = ["serve", "--checkpoint", str(tiny_checkpoint), "--header-timeout-s", "1.5", "--body-timeout-s", "1.5"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(args, port=port, env=env, log=log, cwd=tiny_checkpoint.parent) as s:
        s.port = port
        yield s


def served(url: str) -> bool:
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "ok", "max_tokens": 1}, timeout=10)
    return r.status_code == 200


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """(what the server sent, whether it closed the connection within `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except socket.timeout:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def test_a_header_over_the_limit_is_a_431_in_openais_shape(server):
    r = httpx.get(f"{server.url}/health", headers={"X-Big": "a" * (MAX_HEADER_BYTES + 1)}, timeout=10)
    assert r.status_code == 431, r.text
    err = r.json()["error"]
    assert err["code"] == "headers_too_large" and "64 KiB" in err["message"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # the 16 MiB header line
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off while sending: also a refusal
        data, _ = read_until_closed(sock, 5)
        assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert httpx.get(f"{server.url}/health", headers={"X-Ok": "a" * 8000}, timeout=10).status_code == 200


def test_slowloris_connections_are_closed_at_the_header_deadline_while_others_are_served(server):
    socks = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    try:
        t0 = time.monotonic()
        assert served(server.url)  # while 100 heads are pending
        for s in socks[:50]:  # half keep trickling a header line, half stay silent
            s.sendall(b"X-A: b\r\n")
        time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))
        for s in socks:
            data, closed = read_until_closed(s, 2)
            assert closed and (data == b"" or data.startswith(b"HTTP/1.1 408")), data[:200]
            if data:
                assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert served(server.url)
    finally:
        for s in socks:
            s.close()


def test_a_body_that_does_not_arrive_in_time_is_a_408(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"prompt\":")
        data, closed = read_until_closed(sock, 10)  # closed within 10 s: the body deadline, not the client, ended it
        assert closed and data.startswith(b"HTTP/1.1 408"), data[:300]
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert served(server.url)


def test_a_long_generation_is_not_cut_by_the_deadlines(server):
    """The deadlines cover receiving the request, not answering it: a 4 s stream on a 1.5 s deadline completes."""
    body = {"prompt": "x", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) > 100
