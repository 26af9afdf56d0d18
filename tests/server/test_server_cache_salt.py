"""The prefix cache kept apart per API key and per `cache_salt` (vLLM's field), through a real server and the
openai package: a key that sends another key's prompt, or the text of another key's document, prefills it itself,
so `cached_tokens` tells it nothing of what the other sent; the same key and salt reuse as before."""

from __future__ import annotations

import httpx
import openai
import pytest

TEXT = "".join(chr(33 + (i * 7919) % 90) for i in range(700))  # ~700 tokens: past the prefix cache's 256 minimum
KEY_A, KEY_B = "sk-a", "sk-b"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", api_keys=[KEY_A, KEY_B])) as s:
        yield s


@pytest.fixture(autouse=True)
def empty_cache(server):
    server.engine.engine.prefix_cache.clear()


def oa(server, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def cached(server, key, text, question, **extra) -> int:
    r = oa(server, key).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"{text}\n\n{question}"}], max_tokens=2, temperature=0,
        extra_body={"prefill": "dense", **extra})
    details = r.usage.prompt_tokens_details  # (present only when something was reused)
    return details.cached_tokens if details is not None else 0


def test_a_key_reuses_its_own_prompts_but_never_another_keys(server):
    assert cached(server, KEY_A, TEXT, "First?") == 0
    assert cached(server, KEY_A, TEXT, "Second?") > 256  # the same key: the shared head is reused
    assert cached(server, KEY_B, TEXT, "Third?") == 0  # another key: prefilled for itself
    assert cached(server, KEY_B, TEXT, "Fourth?") > 256  # ... and then reused by that key
    salts = {e.salt for e in server.engine.engine.prefix_cache.entries}
    assert len(salts) == 2 and None not in salts


def test_a_request_salt_keeps_its_prompts_apart_within_a_key(server):
    assert cached(server, KEY_A, TEXT, "First?", cache_salt="alice") == 0
    assert cached(server, KEY_A, TEXT, "Second?", cache_salt="bob") == 0
    assert cached(server, KEY_A, TEXT, "Third?") == 0  # no salt of its own: neither alice's nor bob's
    assert cached(server, KEY_A, TEXT, "Fourth?", cache_salt="alice") > 256


def test_another_keys_document_text_is_not_reused(server):
    text = TEXT[:400]  # under the tiny model's sparse minimum (512): prefilled densely, so any dense prompt may reuse it
    d = httpx.post(server.url + "/v1/documents", json={"text": text},
                   headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120).json()
    try:
        assert cached(server, KEY_B, text, "What is it?") == 0  # the document's layout (documents.ask's) as text
        assert cached(server, KEY_A, text, "What is it?") == d["tokens"]  # the owner's plain request reuses it
    finally:
        httpx.delete(server.url + f"/v1/documents/{d['id']}", headers={"Authorization": f"Bearer {KEY_A}"})


def test_cache_salt_with_a_document_id_is_refused(server, assert_error):
    d = httpx.post(server.url + "/v1/documents", json={"text": TEXT},
                   headers={"Authorization": f"Bearer {KEY_A}"}, timeout=120).json()
    try:
        r = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY_A}"},
                       json={"messages": [{"role": "user", "content": "What is it?"}], "max_tokens": 2,
                             "document_id": d["id"], "cache_salt": "x"})
        assert_error(r, 400, param="cache_salt", code="invalid_combination", contains="document_id")
    finally:
        httpx.delete(server.url + f"/v1/documents/{d['id']}", headers={"Authorization": f"Bearer {KEY_A}"})


@pytest.mark.parametrize("salt,words", [("", "at least 1 character"), ("x" * 257, "at most 256 characters"),
                                        (5, "must be a string")])
def test_a_bad_cache_salt_is_a_400(server, assert_error, salt, words):
    r = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY_A}"},
                   json={"prompt": "hi", "max_tokens": 1, "cache_salt": salt})
    assert_error(r, 400, param="cache_salt", contains=words)
