"""Bad input gets the right status and an OpenAI error body, and the server stays healthy afterwards."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from lighthouse.engine.errors import QueueFull
from lighthouse.engine.options import DECODE_MODES, PREFILL_MODES, RequestOptions
from lighthouse_server.app import create_app
from lighthouse_server.deps import get_engine
from lighthouse_server.documents import owner_of

KEY = "sk-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def client(tiny_checkpoint, settings_for):
    ckpt = tiny_checkpoint
    settings = settings_for(ckpt, api_key=KEY, max_model_len=256, max_body_mb=0.25, served_model_name="tiny")
    with TestClient(create_app(settings)) as c:
        yield c


def post(client, path, body, headers=AUTH, **kw):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, content=data, headers={"content-type": "application/json", **headers}, **kw)


@pytest.fixture(autouse=True)
def healthy_afterwards(client):
    yield
    assert client.get("/health").status_code == 200
    r = post(client, "/v1/completions", {"prompt": "ok", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_prompt_longer_than_the_context(client, assert_error):
    assert_error(post(client, "/v1/completions", {"prompt": "x" * 400}), 400, param="prompt",
                 code="context_length_exceeded")
    chat = {"messages": [{"role": "user", "content": "x" * 400}]}
    assert_error(post(client, "/v1/chat/completions", chat), 400, param="messages", code="context_length_exceeded")


def test_prompt_plus_max_tokens_too_long_names_max_tokens(client, assert_error):
    r = post(client, "/v1/completions", {"prompt": "x" * 100, "max_tokens": 200})
    assert_error(r, 400, param="max_tokens", code="context_length_exceeded", contains="max_tokens")


@pytest.mark.parametrize("field,value", [
    ("temperature", "NaN"), ("temperature", "-0.5"), ("top_p", "1.5"), ("top_p", "Infinity"), ("n", "0"),
    ("max_tokens", "0"), ("presence_penalty", "9"), ("frequency_penalty", "NaN"), ("repetition_penalty", "0"),
    ("min_p", "2"), ("top_k", "-5"), ("logprobs", "99"), ("max_tokens", '"many"'), ("seed", '"x"'),
    ("prefill", '"fast"'), ("decode", '"fast"'), ("kv_mode", '"small"'), ("dense_tail_tokens", "-1"),
    ("dense_tail_tokens", "true"),
    ("stop", "[1]"),
])
def test_out_of_range_or_wrong_type_values_name_the_param(client, field, value, assert_error):
    raw = '{"prompt": "hello", "%s": %s}' % (field, value)
    err = assert_error(post(client, "/v1/completions", raw), 400)
    assert err["param"].split("[")[0] == field, err  # stop [1]: 'stop[0]', the item at fault


def _enum(prop: dict) -> set:
    return {v for alt in prop.get("anyOf", [prop]) for v in alt.get("enum", [])}


@pytest.mark.parametrize("path,model,body", [
    ("/v1/completions", "CompletionRequest", {"prompt": "hello"}),
    ("/v1/chat/completions", "ChatCompletionRequest", {"messages": [{"role": "user", "content": "hello"}]}),
])
def test_modes_are_enums_in_the_schema_and_any_other_value_is_a_400_naming_them(client, path, model, body, assert_error):
    props = client.get("/openapi.json").json()["components"]["schemas"][model]["properties"]
    assert _enum(props["prefill"]) == set(PREFILL_MODES) and _enum(props["decode"]) == set(DECODE_MODES)
    for field in ("prefill", "decode"):
        r = post(client, path, {**body, field: "fast"})
        assert_error(r, 400, param=field, code=None, contains="'sparse'")
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_the_body_reaches_the_engine_as_one_request_options(client):
    real = client.app.state.engine
    seen = []

    class Recorder:
        tokenizer, max_model_len = real.tokenizer, real.max_model_len

        async def submit_async(self, request_id, prompt_ids, params, options=None):
            seen.append(options)
            raise QueueFull("recorded")

    client.app.dependency_overrides[get_engine] = lambda: Recorder()
    try:
        post(client, "/v1/completions", {"prompt": "hi", "prefill": "dense", "decode": "sparse",
                                         "dense_tail_tokens": 8, "cache_prompt": False})
        post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    finally:
        client.app.dependency_overrides.clear()
    salt = owner_of(KEY)  # with an API key, its tenant salts the prefix cache (documents.salt_of)
    assert seen == [RequestOptions("dense", "sparse", 8, cache_prompt=False, cache_salt=salt),
                    RequestOptions(cache_salt=salt)]


def test_chat_top_logprobs_out_of_range(client, assert_error):
    body = {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 50}
    assert_error(post(client, "/v1/chat/completions", body), 400, param="top_logprobs")


@pytest.mark.parametrize("raw", ['{"prompt": "hi"', "not json", "[1, 2]", '"a string"', "null", ""])
def test_malformed_or_non_object_json(client, raw, assert_error):
    assert_error(post(client, "/v1/completions", raw), 400)


@pytest.mark.parametrize("body,param", [
    ({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"), ({"prompt": [""]}, "prompt[0]"),
])
def test_empty_prompt(client, body, param, assert_error):
    assert_error(post(client, "/v1/completions", body), 400, param=param)


def test_empty_messages(client, assert_error):
    assert_error(post(client, "/v1/chat/completions", {"messages": []}), 400, param="messages")


def test_unknown_model_is_404(client, assert_error):
    assert_error(post(client, "/v1/completions", {"model": "gpt-5", "prompt": "hi"}), 404, param="model",
                 code="model_not_found")
    assert_error(client.get("/v1/models/gpt-5", headers=AUTH), 404, code="model_not_found")
    assert_error(client.get("/v1/nothing-here", headers=AUTH), 404)


def test_missing_or_wrong_api_key_is_401(client, assert_error):
    body = {"prompt": "hi", "max_tokens": 1}
    assert_error(post(client, "/v1/completions", body, headers={}), 401, code="invalid_api_key")
    assert_error(post(client, "/v1/completions", body, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"}), 401)
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200  # liveness needs no key


def test_body_too_large_is_413(client, assert_error):
    big = {"prompt": "x" * 300_000}
    assert_error(post(client, "/v1/completions", big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the limit applies while reading
        data = json.dumps(big).encode()
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json", **AUTH})
    assert_error(r, 413)


@pytest.mark.parametrize("status", [429, 503])
def test_queue_full_is_refused_with_retry_after(client, status, assert_error):
    real = client.app.state.engine
    settings = client.app.state.settings

    class Full:
        tokenizer, max_model_len = real.tokenizer, real.max_model_len

        async def submit_async(self, *a, **kw):
            raise QueueFull("too many requests waiting (0); retry later")

    client.app.dependency_overrides[get_engine] = lambda: Full()
    old = settings.queue_full_status
    settings.queue_full_status = status
    try:
        r = post(client, "/v1/completions", {"prompt": "hi"})
        assert_error(r, status, code="queue_full")
        assert r.headers["retry-after"] == "1"
    finally:
        settings.queue_full_status = old
        client.app.dependency_overrides.clear()


def test_no_prompt_text_in_info_logs(client, caplog):
    import logging

    secret = "TOP-SECRET-DOCUMENT-TEXT"
    with caplog.at_level(logging.INFO):
        post(client, "/v1/completions", {"prompt": secret, "max_tokens": 2})
        post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": secret}], "max_tokens": 2})
        post(client, "/v1/completions", {"prompt": secret * 100})  # refused
    assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)


def test_cors_is_configurable(tmp_path, settings_for):
    class Fake:
        accepting = True

        def is_alive(self):
            return True

        def stats(self):
            return {}

        async def shutdown(self, timeout_s):
            pass

    settings = settings_for(tmp_path, cors_origins=["https://app.example"])
    with TestClient(create_app(settings, engine=Fake())) as c:
        r = c.options("/v1/completions", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert r.headers.get("access-control-allow-origin") == "https://app.example"
        r = c.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
