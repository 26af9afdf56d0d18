"""lighthouse_client over real sockets against a tiny stub HTTP server on loopback: retries observed by the
server (503 then 200), timeouts, refused connections, and a stream cut midway (never retried)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import lighthouse_client as lc
import pytest

COMPLETION = {"id": "c", "object": "text_completion", "model": "stub",
              "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}  # fmt: skip


class Stub:
    """Answers POST/GET with the scripted (status, headers, body, delay) entries in order; the last repeats.
    A body of None with status 200 sends a stream that is cut after one event."""

    def __init__(self, *script):
        self.script = list(script)
        self.hits: list[tuple[float, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.answer(self)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                stub.answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, handler):
        self.hits.append((time.monotonic(), handler.path))
        status, headers, body, delay = self.script[min(len(self.hits), len(self.script)) - 1]
        time.sleep(delay)
        if body is None:  # a stream that breaks after its first event
            handler.send_response(200)
            handler.send_header("content-type", "text/event-stream")
            handler.send_header("content-length", "100000")
            handler.end_headers()
            handler.wfile.write(f"data: {json.dumps(COMPLETION)}\n\n".encode())
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        data = json.dumps(body).encode()
        handler.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(data)), **headers}.items():
            handler.send_header(k, v)
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory():
    stubs = []

    def make(*script):
        stubs.append(Stub(*script))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


BUSY = (503, {"retry-after": "0.3"}, {"error": {"message": "queue full", "type": "server_error", "code": None}}, 0)
OK = (200, {}, COMPLETION, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_503_then_200_is_retried_after_retry_after_sync(stub_factory):
    stub = stub_factory(BUSY, OK)
    with lc.Client(base_url=stub.base_url, model="stub") as client:
        assert client.completions.create(prompt="x").text == "ok"
    (t0, _), (t1, _) = stub.hits
    assert len(stub.hits) == 2 and t1 - t0 >= 0.3 - 0.02


def test_503_then_200_is_retried_after_retry_after_async(stub_factory):
    stub = stub_factory(BUSY, OK)

    async def main():
        async with lc.AsyncClient(base_url=stub.base_url, model="stub") as client:
            return await client.completions.create(prompt="x")

    assert asyncio.run(main()).text == "ok"
    assert len(stub.hits) == 2 and stub.hits[1][0] - stub.hits[0][0] >= 0.3 - 0.02


def test_503_until_retries_run_out_raises_with_the_servers_message(stub_factory):
    stub = stub_factory(BUSY)
    with pytest.raises(lc.ServiceUnavailableError, match="queue full") as info:
        lc.Client(base_url=stub.base_url, model="stub", max_retries=1).completions.create(prompt="x")
    assert info.value.status_code == 503 and len(stub.hits) == 2


def test_a_slow_server_raises_api_timeout_error_sync_and_async(stub_factory):
    stub = stub_factory((200, {}, COMPLETION, 1.5))
    client = lc.Client(base_url=stub.base_url, model="stub", max_retries=0, timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(lc.APITimeoutError):
        client.completions.create(prompt="x")
    with pytest.raises(lc.APITimeoutError):  # per-call timeout overrides a generous client one
        lc.Client(base_url=stub.base_url, model="stub", max_retries=0).completions.create(prompt="x", timeout=0.2)

    async def main():
        async with lc.AsyncClient(base_url=stub.base_url, model="stub", max_retries=0, timeout=0.2) as ac:
            await ac.completions.create(prompt="x")

    with pytest.raises(lc.APITimeoutError):
        asyncio.run(main())
    assert time.monotonic() - t0 < 1.5 and len(stub.hits) == 3


def test_connection_refused_raises_api_connection_error_after_retries():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(lc.APIConnectionError) as info:
        lc.Client(base_url=url, model="m", max_retries=2).completions.create(prompt="x")
    assert not isinstance(info.value, lc.APITimeoutError)
    assert time.monotonic() - t0 >= (0.5 + 1.0) * 0.75  # two backoff sleeps happened

    async def main():
        async with lc.AsyncClient(base_url=url, model="m", max_retries=0) as ac:
            await ac.models.list()

    with pytest.raises(lc.APIConnectionError):
        asyncio.run(main())


def test_a_stream_cut_midway_raises_and_is_not_retried(stub_factory):
    stub = stub_factory((200, {}, None, 0))
    client = lc.Client(base_url=stub.base_url, model="stub", max_retries=3)
    got = []
    with pytest.raises(lc.APIConnectionError):
        with client.completions.create(prompt="x", stream=True) as stream:
            for chunk in stream:
                got.append(chunk)
    assert [c.text for c in got] == ["ok"] and len(stub.hits) == 1
