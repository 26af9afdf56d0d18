"""Bad input and odd settings as a client sees them over real HTTP (uvicorn on loopback, raw httpx where a client
library would hide the fault): a clear 4xx naming the field, a connection that stays usable, CORS on every
error, and limits that mean what the README says."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from lighthouse_server.deps import get_engine
from lighthouse_server.prompts import TOKENIZE_CONCURRENCY, PromptEncoder

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def server(ckpt, loopback_server, settings_for):
    settings = settings_for(ckpt, cors_origins=[ORIGIN], max_body_mb=1.0, max_num_seqs=2, max_waiting=0)
    with loopback_server(settings) as s:
        yield s


def raw_post(client: httpx.Client, path: str, text: str, **headers) -> httpx.Response:
    """POST a JSON body written by hand (so escapes like \\ud800 reach the server as sent)."""
    return client.post(path, content=text.encode(), headers={"content-type": "application/json", **headers})


LONE_SURROGATES = [
    ("/v1/completions", '{"prompt": "ab\\ud800cd", "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": "ab\\udfffcd", "max_tokens": 2, "stream": true}', "prompt"),
    ("/v1/completions", '{"prompt": ["ab\\ud800"], "max_tokens": 2}', "prompt[0]"),
    ("/v1/completions", '{"prompt": "ok", "stop": ["\\ud800"], "max_tokens": 2}', "stop[0]"),
    ("/v1/completions", '{"prompt": "ok", "model": "\\ud800", "max_tokens": 2}', "model"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a\\ud800"}], "max_tokens": 2}',
     "messages[0].content"),
    ("/v1/chat/completions",
     '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}], "stream": true}',
     "messages[0].content[0].text"),
    ("/tokenize", '{"prompt": "ab\\ud800cd"}', "prompt"),
    ("/tokenize", '{"messages": [{"role": "\\ud800", "content": "x"}]}', "messages[0].role"),
]


@pytest.mark.parametrize("path,body,param", LONE_SURROGATES)
def test_a_lone_surrogate_is_a_400_naming_the_field_and_the_connection_stays_usable(server, path, body, param, assert_error):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        err = assert_error(raw_post(c, path, body), 400, param=param)
        assert "surrogate" in err["message"]
        # same keep-alive connection: the next request is answered, not reset
        r = raw_post(c, "/v1/completions", '{"prompt": "ok", "max_tokens": 1, "temperature": 0}')
        assert r.status_code == 200 and r.headers.get("connection") != "close"


def test_a_hundred_bad_and_good_requests_on_one_keep_alive_connection_all_get_answers(server):
    seen_ports = set()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for i in range(100):
            body = '{"prompt": "ab\\ud800cd"}' if i % 2 else '{"prompt": "ok", "max_tokens": 1, "temperature": 0}'
            r = raw_post(c, "/v1/completions" if i % 4 < 2 else "/tokenize", body)
            assert r.status_code == (400 if i % 2 else 200), (i, r.text)
            stream = r.extensions.get("network_stream")
            if stream is not None:
                seen_ports.add(stream.get_extra_info("client_addr"))
    assert len(seen_ports) <= 1  # one connection throughout


def test_an_unexpected_exception_is_a_500_with_cors_and_the_connection_stays_usable(server, assert_error):
    class Broken:
        tokenizer = property(lambda self: (_ for _ in ()).throw(RuntimeError("boom")))
        max_model_len = 10

    server.app.dependency_overrides[get_engine] = lambda: Broken()
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Origin": ORIGIN}) as c:
            r = raw_post(c, "/v1/completions", '{"prompt": "x"}')
            assert_error(r, 500, code="internal_error")
            assert r.headers.get("access-control-allow-origin") == ORIGIN
            assert r.headers.get("connection") != "close"
            server.app.dependency_overrides.clear()
            assert c.get("/health").status_code == 200  # same connection, still fine
    finally:
        server.app.dependency_overrides.clear()


def test_413_carries_cors_headers(server, assert_error):
    with httpx.Client(base_url=server.url, timeout=30, headers={"Origin": ORIGIN}) as c:
        r = raw_post(c, "/v1/completions", json.dumps({"prompt": "x" * (2 << 20)}))
        assert_error(r, 413, code="request_too_large")
        assert r.headers.get("access-control-allow-origin") == ORIGIN


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(ckpt, loopback_server, settings_for, assert_error):
    """The bundled byte tokenizer covers at most 19 bytes per token (its longest special token): 16K tokens can
    never hold 1 MB, so a 48 MiB prompt is refused in well under a second (it took minutes and gigabytes)."""
    settings = settings_for(ckpt, max_body_mb=64.0)
    with loopback_server(settings) as s:
        calls = []
        tok = s.engine.tokenizer
        real_encode = tok.encode
        tok.encode = lambda *a, **kw: calls.append(1) or real_encode(*a, **kw)
        big = "x" * (48 << 20)
        with httpx.Client(base_url=s.url, timeout=60) as c:
            for path, body, param in [("/v1/completions", {"prompt": big}, "prompt"),
                                      ("/v1/chat/completions", {"messages": [{"role": "user", "content": big}]},
                                       "messages"),
                                      ("/tokenize", {"prompt": big}, "prompt")]:
                err = assert_error(c.post(path, json=body), 400, param=param, code="context_length_exceeded")
                assert "19 bytes" in err["message"]
            assert not calls  # never tokenized
            # a prompt just over the context but under the byte bound is still counted exactly
            r = c.post("/tokenize", json={"prompt": "y" * 20_000})
            assert r.status_code == 200 and r.json()["count"] == 20_001 and calls


def test_at_most_a_few_prompts_are_tokenized_at_once():
    active, peak = [0], [0]
    lock = threading.Lock()

    class SlowTokenizer:
        def encode(self, text, add_special_tokens=True):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.1)
            with lock:
                active[0] -= 1
            return [1] * len(text)

    enc = PromptEncoder(SlowTokenizer(), max_model_len=1000)

    async def main():
        return await asyncio.gather(*[enc.encode("abc") for _ in range(8)])

    assert asyncio.run(main()) == [[1, 1, 1]] * 8
    assert peak[0] == TOKENIZE_CONCURRENCY


def test_max_waiting_0_admits_up_to_the_running_slots_and_refuses_the_rest(server, wait_until, assert_error):
    body = {"prompt": "wait", "max_tokens": 4000, "ignore_eos": True, "stream": True, "temperature": 0}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        # idle: admitted at once
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).status_code == 200
        with c.stream("POST", "/v1/completions", json=body) as a, c.stream("POST", "/v1/completions", json=body) as b:
            lines = a.iter_lines(), b.iter_lines()  # kept: a dropped iterator closes its response
            next(lines[0]), next(lines[1])  # both running (max_num_seqs=2)
            assert wait_until(lambda: server.engine.stats()["running"] == 2)
            r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
            assert_error(r, 429, code="queue_full")
            assert r.headers["retry-after"] == "1"
    assert wait_until(lambda: server.engine.stats()["running"] == 0)


def test_max_tokens_null_on_completions_means_openais_default_of_16(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for body in ({"prompt": "x", "max_tokens": None}, {"prompt": "x"}):
            r = c.post("/v1/completions", json={**body, "ignore_eos": True, "temperature": 0})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 16


def test_a_temperature_too_small_to_divide_by_is_greedy_not_an_error(server):
    """5e-324 is a valid temperature (schemathesis sent it): logits / 5e-324 overflow, so below 1e-5 is greedy."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        greedy = c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 8, "temperature": 0})
        tiny = c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 8, "temperature": 5e-324,
                                               "stream": True})
        assert greedy.status_code == 200 and tiny.status_code == 200
        events = [json.loads(line[6:]) for line in tiny.text.splitlines() if line.startswith("data: {")]
        assert all("error" not in e for e in events)
        assert "".join(e["choices"][0]["text"] for e in events) == greedy.json()["choices"][0]["text"]
