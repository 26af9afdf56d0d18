"""Structured output over HTTP on a tiny random checkpoint: response_format json_schema and json_object through the
official `openai` package (chat, streamed and not, n > 1, logprobs) and lighthouse_client, vLLM's guided_choice,
guided_regex and guided_json on completions, and the 400s that name the field: a schema or regex the grammar
library refuses, two grammars at once, a json_schema without its schema or name."""

from __future__ import annotations

import json
import re

import httpx
import lighthouse_client as lc
import openai
import pytest

jsonschema = pytest.importorskip("jsonschema")

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}
RF = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
HI = [{"role": "user", "content": "Who is it? Answer in JSON."}]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_chat_json_schema_through_the_openai_package(client):
    r = client.chat.completions.create(model="tiny", messages=HI, response_format=RF, max_tokens=60, n=3, seed=4,
                                       temperature=1.0, logprobs=True, top_logprobs=2)
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), PERSON)
        assert c.logprobs.content[0].token == "{" and c.logprobs.content[0].logprob == pytest.approx(0, abs=1e-5)


def test_chat_json_schema_streamed_and_with_speculation(client):
    chunks = client.chat.completions.create(model="tiny", messages=HI, response_format=RF, max_tokens=60,
                                            temperature=0, stream=True,
                                            extra_body={"speculative": {"method": "prompt_lookup", "num_tokens": 4}})
    parts, reasons = [], []
    for ch in chunks:
        for c in ch.choices:
            parts.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    jsonschema.validate(json.loads("".join(parts)), PERSON)
    assert reasons[-1] == "stop"
    plain = client.chat.completions.create(model="tiny", messages=HI, response_format=RF, max_tokens=60, temperature=0)
    assert plain.choices[0].message.content == "".join(parts)


def test_json_object_that_runs_out_of_tokens_ends_with_length(client):
    r = client.chat.completions.create(model="tiny", messages=HI, response_format={"type": "json_object"},
                                       max_tokens=5, temperature=0)
    c = r.choices[0]
    assert c.finish_reason == "length" and c.message.content.startswith("{")


def test_guided_choice_regex_and_json_on_completions(client):
    r = client.completions.create(model="tiny", prompt="Is it? ", max_tokens=10, n=4, seed=1, temperature=1.0,
                                  extra_body={"guided_choice": ["yes", "no", "perhaps"]})
    assert {c.text for c in r.choices} <= {"yes", "no", "perhaps"}
    pattern = r"[A-Z][a-z]{2,5} [0-9]{3}"
    r = client.completions.create(model="tiny", prompt="Code: ", max_tokens=20, temperature=1.0, seed=2,
                                  extra_body={"guided_regex": pattern})
    assert re.fullmatch(pattern, r.choices[0].text) and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="tiny", prompt="x", max_tokens=60, temperature=0,
                                  extra_body={"guided_json": json.dumps(PERSON)})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)
    r = client.completions.create(model="tiny", prompt="x", max_tokens=60, temperature=0,
                                  extra_body={"response_format": RF})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)


def test_the_sdk_sends_response_format(server):
    with lc.Client(base_url=server.url, model="tiny") as c:
        r = c.chat.completions.create(messages=HI, response_format=RF, max_tokens=60, temperature=0)
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        r = c.completions.create(prompt="Pick: ", guided_choice=["left", "right"], max_tokens=8, temperature=0)
        assert r.choices[0].text in ("left", "right")


@pytest.mark.parametrize("body,param,code", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nonsense"}}}},
     "response_format.json_schema", "invalid_grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p"}}}, "response_format.json_schema.schema",
     None),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": PERSON}}}, "response_format.json_schema.name",
     None),
    ({"response_format": {"type": "xml"}}, "response_format", None),
    ({"response_format": {"type": {}}}, "response_format", None),
    ({"response_format": "json_object"}, "response_format", None),
    ({"guided_regex": "a(b"}, "guided_regex", "invalid_grammar"),
    ({"guided_json": "{not json"}, "guided_json", "invalid_grammar"),
    ({"guided_json": "[1]"}, "guided_json", "invalid_grammar"),
    ({"guided_choice": []}, "guided_choice", None),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "invalid_combination"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_bad_structured_output_is_a_400_naming_the_field(http, assert_error, body, param, code, path):
    prompt = {"messages": HI} if path.endswith("chat/completions") else {"prompt": "x"}
    r = http.post(path, json={**prompt, "max_tokens": 4, **body})
    assert_error(r, 400, param=param, **({} if code is None else {"code": code}))


def test_text_format_is_free_text(http):
    r = http.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 4, "response_format": {"type": "text"},
                                                "temperature": 0})
    assert r.status_code == 200, r.text


def test_a_slow_grammar_compile_does_not_hold_up_other_requests(server, http, monkeypatch):
    """The grammar compiles in a worker thread, not on the event loop: while one request's compile is held (here until
    the test lets it go), /health and an unconstrained completion are answered; the held request then succeeds. On
    the event loop they would wait for the compile, which waits for them: their 20 s timeouts would fail the test."""
    import threading

    from lighthouse.engine.structured.grammar import Grammars

    real, started, release = Grammars.matchers, threading.Event(), threading.Event()

    def held(self, spec, n):
        started.set()
        release.wait(120)
        return real(self, spec, n)

    monkeypatch.setattr(Grammars, "matchers", held)
    result = {}

    def structured():
        result["r"] = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 8, "guided_choice": ["yes", "no"]})

    t = threading.Thread(target=structured)
    t.start()
    try:
        assert started.wait(30)
        assert http.get("/health", timeout=20).status_code == 200
        r = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=20)
        assert r.status_code == 200
        assert "r" not in result  # answered while the compile was still held
    finally:
        release.set()
        t.join(120)
    assert result["r"].status_code == 200 and result["r"].json()["choices"][0]["text"] in ("yes", "no")
