"""The `speculative` request field over HTTP: validated (400 naming the field), greedy answers unchanged by it,
streaming of several tokens per step, and the draft/accepted counters on /metrics."""

from __future__ import annotations

import json

import httpx
import pytest

PROMPT = "abc def ghi jkl " * 12  # a repeated span: prompt lookup has drafts


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny")) as s:
        yield s


def complete(server, **kw):
    body = {"model": "tiny", "prompt": PROMPT, "temperature": 0, "max_tokens": 40, **kw}
    return httpx.post(server.url + "/v1/completions", json=body, timeout=60)


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


@pytest.mark.parametrize("value,param", [
    ({"method": "medusa", "num_tokens": 4}, "speculative.method"),
    ({"method": "prompt_lookup", "num_tokens": 17}, "speculative.num_tokens"),
    ({"method": "prompt_lookup", "num_tokens": -1}, "speculative.num_tokens"),
    ({"method": "prompt_lookup", "num_tokens": "4"}, "speculative.num_tokens"),
    ({"method": "prompt_lookup"}, "speculative.num_tokens"),
    ("prompt_lookup", "speculative"),
])
def test_bad_speculative_values_are_400s_naming_the_field(server, assert_error, value, param):
    assert_error(complete(server, speculative=value), 400, param=param)


def test_greedy_answers_are_the_same_with_speculation_and_the_counters_move(server):
    drafts, accepted = (metric(server, f"lighthouse_spec_decode_num_{n}_tokens_total") for n in ("draft", "accepted"))
    plain = complete(server)
    spec = complete(server, speculative={"method": "prompt_lookup", "num_tokens": 5})
    off = complete(server, speculative=None)
    assert plain.status_code == spec.status_code == off.status_code == 200, spec.text
    texts = [r.json()["choices"][0]["text"] for r in (plain, spec, off)]
    assert texts[0] == texts[1] == texts[2]
    assert spec.json()["usage"]["completion_tokens"] == plain.json()["usage"]["completion_tokens"] == 40
    assert metric(server, "lighthouse_spec_decode_num_draft_tokens_total") > drafts
    assert metric(server, "lighthouse_spec_decode_num_accepted_tokens_total") > accepted


def test_chat_streams_several_tokens_per_step_as_the_same_text(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 32,
            "stream": True, "stream_options": {"include_usage": True}}
    texts = []
    for spec in (None, {"method": "prompt_lookup", "num_tokens": 4}):
        pieces, usage = [], None
        with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "speculative": spec},
                          timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk["choices"]:
                        pieces.append(chunk["choices"][0]["delta"].get("content") or "")
                    usage = chunk.get("usage") or usage
        texts.append("".join(pieces))
        assert usage["completion_tokens"] == 32
    assert texts[0] == texts[1]
