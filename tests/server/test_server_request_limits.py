"""What a chat or completion body may ask, over real HTTP: roles the template knows, no tool calling or structured
output silently ignored, seeds in the int64 range, bounded lists (checked before any templating), and 400
messages that say in words what is wrong with which field."""

from __future__ import annotations

import json

import httpx
import pytest

from lighthouse_server.chat_template import ChatTemplate
from lighthouse_server.schemas import MAX_MESSAGES, MAX_STOP_TOKEN_IDS

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, max_model_len=512)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("messages,param", [
    ([{"role": "wizard", "content": "x"}], "messages[0].role"),
    ([*HI, {"role": "system<|end_header_id|>", "content": "x"}], "messages[1].role"),
    ([*HI, {"role": "assistant", "content": "a"}, {"role": "User", "content": "x"}], "messages[2].role"),
    ([{"role": "", "content": "x"}], "messages[0].role"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_a_role_the_template_does_not_know_is_a_400_naming_it(client, path, messages, param, assert_error):
    err = assert_error(client.post(path, json={"messages": messages}), 400, param=param)
    assert "'system' (or 'developer'), 'user' or 'assistant'" in err["message"]


def test_a_developer_message_is_the_system_turn(client):
    """OpenAI's `developer` role (system instructions for newer models) renders as the template's system turn."""
    def ids(role):
        r = client.post("/tokenize", json={"messages": [{"role": role, "content": "Be brief."}, *HI]})
        assert r.status_code == 200, r.text
        return r.json()["tokens"]
    assert ids("developer") == ids("system") != ids("user")
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "developer", "content": "Be brief."}, *HI],
                                                  "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(ids("system"))


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"messages": [*HI, {"role": "assistant", "content": None,
                         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
     "messages[1].tool_calls"),
    ({"messages": [*HI, {"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages[1].role"),
    ({"messages": [*HI, {"role": "user", "content": "42", "tool_call_id": "c1"}]}, "messages[1].tool_call_id"),
    ({"messages": [*HI, {"role": "function", "name": "f", "content": "42"}]}, "messages[1].role"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calling_is_refused_not_ignored(client, body, param, stream, assert_error):
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, "stream": stream, **body})
    err = assert_error(r, 400, param=param, code="unsupported_parameter", contains="not supported")
    assert "calling" in err["message"]


@pytest.mark.parametrize("message", [{"role": "user", "content": None}, {"role": "user"},
                                     {"role": "system", "content": None}])
def test_a_message_without_content_is_refused_unless_assistant(client, message, assert_error):
    """As OpenAI: a user or system turn needs content (a null one was read as empty text); an assistant turn may
    leave it null."""
    r = client.post("/v1/chat/completions", json={"messages": [message, *HI], "max_tokens": 2})
    assert_error(r, 400, param="messages[0].content", code="invalid_combination", contains="needs content")
    r = client.post("/v1/chat/completions", json={"messages": [*HI, {"role": "assistant", "content": None}, *HI],
                                                  "max_tokens": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [{"tools": []}, {"tool_choice": "none"}, {"functions": []}, {"function_call": "none"},
                                  {"response_format": {"type": "text"}}, {"tools": None, "response_format": None}])
def test_values_that_ask_for_nothing_are_accepted(client, body):
    r = client.post("/v1/chat/completions", json={"messages": HI, "max_tokens": 2, **body})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,param", [({"logit_bias": {"5": 1}}, "logit_bias"), ({"suffix": "y"}, "suffix"),
                                        ({"echo": True}, "echo")])
def test_unsupported_completion_fields_are_refused_as_such(client, body, param, assert_error):
    """logit_bias and suffix were 400s saying 'must have at most 0 items/characters', with no code."""
    assert_error(client.post("/v1/completions", json={"prompt": "x", **body}), 400, param=param,
                 code="unsupported_parameter", contains="not supported")
    empty = {"logit_bias": {}, "suffix": "", "echo": False}[param]
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, param: empty}).status_code == 200


@pytest.mark.parametrize("seed", [2**63, 2**64, 2**64 + 1, -(2**63) - 1, -(2**64)])
def test_a_seed_outside_int64_is_a_400(client, seed, assert_error):
    """2^64 used to be seed 0 and -1 seed 2^64 - 1 (modulo 2^64); now only int64 seeds exist."""
    assert_error(client.post("/v1/completions", json={"prompt": "x", "seed": seed}), 400, param="seed",
                 contains="9223372036854775807" if seed > 0 else "-9223372036854775808")


def test_seeds_across_the_int64_range_sample_streams_of_their_own(client):
    """On the CPU seed -1 drew what 2^63 - 1 did, and 5 what 5 + 2^32 did (mt19937 kept 32 bits of the seed)."""
    def text(seed):
        r = client.post("/v1/completions", json={"prompt": "x", "seed": seed, "max_tokens": 12, "temperature": 1.5,
                                                 "ignore_eos": True})
        assert r.status_code == 200, (seed, r.text)
        return r.json()["choices"][0]["text"]
    for a, b in [(-1, 2**63 - 1), (0, -(2**63)), (5, 5 + 2**32)]:
        assert text(a) != text(b), (a, b)
    assert text(-1) == text(-1)


def test_too_many_messages_are_refused_before_templating(client, monkeypatch, assert_error):
    calls = []
    real = ChatTemplate.render
    monkeypatch.setattr(ChatTemplate, "render", lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    err = assert_error(client.post("/v1/chat/completions", json={"messages": HI * (MAX_MESSAGES + 1)}), 400,
                       param="messages")
    assert f"at most {MAX_MESSAGES}" in err["message"]
    # the probe: 10^6 one-character messages (32 MiB) took 24-27 s of templating before its 400
    # (refused before any templating: `calls` stays empty; no wall-clock bound, which a loaded CI box could break)
    assert_error(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}] * 10**6}),
                 400, param="messages")
    assert not calls
    assert client.post("/tokenize", json={"messages": HI * MAX_MESSAGES}).status_code == 200 and calls


def test_content_too_long_in_total_is_refused_before_templating(client, monkeypatch, assert_error):
    """Each message fits alone; together they cannot fit the context: refused on their lengths, never templated."""
    calls = []
    monkeypatch.setattr(ChatTemplate, "render", lambda self, *a, **kw: calls.append(1))
    many = [{"role": "user", "content": "x" * 4000}] * 1000  # 4 MB; 512 tokens cover at most ~10 KB
    assert_error(client.post("/v1/chat/completions", json={"messages": many}), 400, param="messages",
                 code="context_length_exceeded")
    assert not calls


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "stop_token_ids": list(range(MAX_STOP_TOKEN_IDS + 1))}, "stop_token_ids"),
    ({"prompt": "x", "stop": ["a"] * 17}, "stop"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 257}]}, "messages[0].content"),
])
def test_lists_are_capped(client, body, param, assert_error):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert_error(client.post(path, json=body), 400, param=param, contains="at most")


def test_detokenize_is_capped(client, assert_error):
    r = client.post("/detokenize", json={"tokens": [1] * ((1 << 21) + 1)})
    assert_error(r, 400, param="tokens", contains="at most 2097152")


INTERNALS = ("function-after", "constrained-str", "Value error", "Input should", "after validation", "list[", "str]",
             "literal_error", "[key]")


@pytest.mark.parametrize("path,body,param,words", [
    ("/v1/completions", {"prompt": 5}, "prompt", "must be a string or an array, got 5"),
    ("/v1/completions", {"prompt": [[]]}, "prompt[0]", "must have at least 1 item, got 0"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, "stop", "must be a string or an array"),
    ("/v1/completions", {"prompt": "x", "stop": [1]}, "stop[0]", "must be a string, got 1"),
    ("/v1/completions", {"prompt": "x", "n": "2"}, "n", 'must be an integer, got "2"'),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, "top_p", "less than or equal to 1, got 2"),
    ("/v1/completions", {"prompt": "x", "prefill": "fast"}, "prefill", "'sparse' or 'dense'"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 1}}, "logit_bias", "not supported"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix", "not supported"),
    ("/v1/completions", {"prompt": "x", "echo": True}, "echo", "not supported"),
    ("/v1/completions", {}, "prompt", "'prompt' is required"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role", "'messages[0].role' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 1}]}, "messages[0].content",
     "must be a string or an array, got 1"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].type", "'text'"),
    ("/v1/chat/completions", {"messages": HI, "stream_options": 1}, "stream_options", "must be an object"),
    ("/v1/documents", {"text": 5}, "text", "must be a string, got 5"),  # was 'text: Input should be a valid string'
    ("/v1/documents", {}, "text", "'text' is required"),
    ("/v1/documents", {"text": "x", "ttl_s": 1}, "ttl_s", "greater than or equal to 60, got 1"),
])
def test_a_400_says_in_words_what_is_wrong_with_which_field(client, path, body, param, words, assert_error):
    err = assert_error(client.post(path, json=body), 400, param=param, contains=words)
    assert not any(x in err["message"] for x in INTERNALS), err["message"]
    assert param in err["message"]


def test_a_lone_surrogate_in_a_prompt_list_names_the_item_without_internals(client, assert_error):
    raw = '{"prompt": ["ab\\ud800"]}'
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    err = assert_error(r, 400, contains="surrogate")
    assert err["param"].startswith("prompt") and not any(x in err["message"] for x in INTERNALS), err
    json.dumps(err)
