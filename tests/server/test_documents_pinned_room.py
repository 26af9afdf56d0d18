"""A prompt that can never fit in the KV cache beside the pinned documents gets a 400 (code kv_cache_exceeded, as a
prompt too large for the whole cache) at once, naming the caller's pinned documents and what fits; in a stream, the
same error object is the stream's event. Deleting the document lets the same request run. Every call has a timeout
(before the fix such a request waited forever)."""

from __future__ import annotations

import json

import httpx
import pytest

BLOCK_BYTES = 2 * 2 * 16 * 128 * 4  # one layer's block of the tiny preset in fp32
DOC = "".join(chr(33 + (i * 7919) % 90) for i in range(900))  # ~930 tokens with the chat markup: 16 of 32 blocks
BIG = "".join(chr(33 + (i * 104729) % 90) for i in range(1500))  # 2 x 12 blocks: under 32, over the 16 left


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    kv_gb = 33 * BLOCK_BYTES / 2**30  # 32 usable blocks
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", kv_cache_gb=kv_gb,
                                      documents_kv_share=0.8)) as s:
        yield s


@pytest.mark.timeout(180)
def test_a_prompt_that_never_fits_beside_pinned_documents_is_a_400_naming_them(server, assert_error):
    c = httpx.Client(base_url=server.url, timeout=60)
    d = c.post("/v1/documents", json={"text": DOC, "name": "manual"}).json()
    assert d["pinned"], d
    body = {"model": "tiny", "prompt": BIG, "max_tokens": 4, "temperature": 0}
    err = assert_error(c.post("/v1/completions", json=body), 400, code="kv_cache_exceeded")
    assert "pinned" in err["message"] and d["id"] in err["message"] and "manual" in err["message"]
    assert "of the server's 32 blocks" in err["message"]

    with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:  # a stream: its error event
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    first = json.loads(events[0])["error"]
    assert first["code"] == "kv_cache_exceeded" and d["id"] in first["message"] and events[-1] == "[DONE]"

    # a question on the document still fits beside it
    ask = c.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4, "document_id": d["id"],
                                               "messages": [{"role": "user", "content": "Question: which?"}]})
    assert ask.status_code == 200, ask.text

    assert c.delete(f"/v1/documents/{d['id']}").status_code == 200
    r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
