"""/v1/documents through a real server: upload once, ask by id (openai package and the SDK), list, delete, TTL,
tenant isolation, the pinned-memory budget, and the disk store across a restart."""

from __future__ import annotations

import json
import shutil

import httpx
import lighthouse_client as lc
import openai
import pytest
import safetensors.torch

from lighthouse.engine.cache import disk_tier

DOC = "".join(chr(33 + (i * 7919) % 90) for i in range(900))  # 900 ASCII bytes: sparse-eligible, > 256 tokens
KEY_A, KEY_B = "sk-a", "sk-b"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", api_keys=[KEY_A, KEY_B])) as s:
        yield s


def http(server, key=KEY_A) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def oa(server, key=KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def upload(server, key=KEY_A, **body) -> dict:
    body.setdefault("text", DOC)
    r = http(server, key).post("/v1/documents", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def ask(client, doc_id, question="What is it?", **kw):
    return client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": f"Question: {question}"}], max_tokens=8, temperature=0,
        logprobs=True, extra_body={"document_id": doc_id, **kw.pop("extra", {})}, **kw)


def test_upload_returns_id_tokens_and_seconds_and_pins_the_document(server):
    d = upload(server, name="manual")
    assert d["id"].startswith("doc-") and d["object"] == "document" and d["name"] == "manual"
    assert d["tokens"] > len(DOC) and d["seconds"] > 0 and d["pinned"] and d["kv_bytes"] > 0
    pins = [e for e in server.engine.engine.prefix_cache.entries if e.pins]
    assert any(e.length == d["tokens"] for e in pins)


def test_asking_by_id_reuses_the_document_and_matches_the_inline_layout(server):
    d = upload(server)
    client = oa(server)
    first, again = ask(client, d["id"]), ask(client, d["id"])
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.prompt_tokens_details.cached_tokens == d["tokens"]  # the document was not prefilled again
    inline = client.chat.completions.create(  # documents.ask's layout, the document sent as text
        model="tiny", messages=[{"role": "user", "content": f"{DOC}\n\nQuestion: What is it?"}], max_tokens=1)
    assert first.usage.prompt_tokens == inline.usage.prompt_tokens
    # the second reuses the first's longer entry: the same arithmetic up to summation order
    tokens = [t.logprob for t in first.choices[0].logprobs.content]
    assert tokens == pytest.approx([t.logprob for t in again.choices[0].logprobs.content], abs=1e-4)


def test_a_document_shorter_than_the_prefix_caches_minimum_is_pinned_and_reused(server):
    short = "The pass key is 4817. Remember it."  # ~60 tokens with the chat markup, under the 256-token minimum
    d = upload(server, text=short, name="short")
    assert d["tokens"] < server.engine.engine.config.prefix_cache_min_tokens
    assert d["pinned"] and d["kv_bytes"] > 0
    assert any(e.pins and e.length == d["tokens"] for e in server.engine.engine.prefix_cache.entries)
    client = oa(server)
    r = ask(client, d["id"])
    assert r.usage.prompt_tokens_details.cached_tokens == d["tokens"]  # the document was not prefilled again
    inline = client.chat.completions.create(  # the same prompt, the document sent as text, nothing reused
        model="tiny", messages=[{"role": "user", "content": f"{short}\n\nQuestion: What is it?"}], max_tokens=8,
        temperature=0, logprobs=True, extra_body={"cache_prompt": False})
    assert inline.usage.prompt_tokens == r.usage.prompt_tokens and inline.usage.prompt_tokens_details is None
    assert r.choices[0].message.content == inline.choices[0].message.content
    assert [t.logprob for t in r.choices[0].logprobs.content] == pytest.approx(
        [t.logprob for t in inline.choices[0].logprobs.content], abs=1e-4)


def test_a_chat_with_another_system_message_than_the_uploads_prefills_the_document_afresh(server):
    # the SDK's upload carries its default system message; a plain chat by id without one has a shorter head than
    # the upload's, which once made the question's dense tail negative (a 500)
    with lc.Client(base_url=server.url, api_key=KEY_A, max_retries=0) as sdk:
        d = sdk.documents.upload(DOC, name="with-system")
    client = oa(server)
    r = ask(client, d.id)  # no system message: the document is encoded afresh after this chat's head
    inline = client.chat.completions.create(  # the same prompt, the document sent as text, nothing reused
        model="tiny", messages=[{"role": "user", "content": f"{DOC}\n\nQuestion: What is it?"}], max_tokens=8,
        temperature=0, logprobs=True, extra_body={"cache_prompt": False})
    assert r.usage.prompt_tokens == inline.usage.prompt_tokens
    assert r.choices[0].message.content == inline.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:  # citations read the pinned layout only
        ask(client, d.id, extra={"citations": True})
    assert err.value.code == "citations_unavailable"


def test_completions_take_document_id_before_the_prompt(server):
    d = upload(server)
    r = oa(server).completions.create(model="tiny", prompt="Summary:", max_tokens=4, temperature=0,
                                      extra_body={"document_id": d["id"]})
    assert r.usage.prompt_tokens == d["tokens"] + len("\n\nSummary:")
    assert r.usage.prompt_tokens_details.cached_tokens >= d["tokens"]  # (an earlier question may share "\n\n")


def test_list_get_and_delete(server, assert_error):
    d = upload(server, name="to-delete")
    c = http(server)
    assert d["id"] in [x["id"] for x in c.get("/v1/documents").json()["data"]]
    assert c.get(f"/v1/documents/{d['id']}").json()["tokens"] == d["tokens"]
    assert c.delete(f"/v1/documents/{d['id']}").json() == {"id": d["id"], "object": "document.deleted",
                                                           "deleted": True}
    assert_error(c.get(f"/v1/documents/{d['id']}"), 404, code="document_not_found")
    assert_error(c.delete(f"/v1/documents/{d['id']}"), 404, code="document_not_found")
    with pytest.raises(openai.NotFoundError):
        ask(oa(server), d["id"])


def test_multipart_file_upload(server):
    r = http(server).post("/v1/documents", files={"file": ("doc.txt", DOC.encode(), "text/plain")},
                          data={"name": "from-file", "ttl_s": "600"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "from-file" and r.json()["ttl_s"] == 600 and r.json()["tokens"] > len(DOC)


def upload_events(r: httpx.Response) -> list:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    data = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(x) for x in data[:-1]]


def test_a_streamed_upload_sends_prefill_progress_then_the_document(server):
    events = upload_events(http(server).post("/v1/documents", json={"text": DOC, "name": "streamed", "stream": True}))
    *progress, d = events
    assert d["object"] == "document" and d["name"] == "streamed" and d["pinned"] and d["tokens"] > len(DOC)
    assert progress and all(p["object"] == "document.progress" and p["id"] == d["id"] for p in progress)
    pp = [p["prompt_progress"] for p in progress]
    assert all(set(p) == {"total", "cache", "processed", "time_ms"} and p["total"] == d["tokens"] for p in pp)
    assert [p["processed"] for p in pp] == sorted(p["processed"] for p in pp) and pp[-1]["processed"] == d["tokens"]
    assert http(server).get(f"/v1/documents/{d['id']}").json()["tokens"] == d["tokens"]  # usable as any upload


def test_accept_event_stream_streams_a_file_upload_and_refusals_stay_http_errors(server, assert_error):
    c = http(server)
    events = upload_events(c.post("/v1/documents", files={"file": ("doc.txt", DOC.encode(), "text/plain")},
                                  headers={"Accept": "text/event-stream"}))
    assert events[-1]["object"] == "document" and events[-1]["pinned"]
    assert events[0]["object"] == "document.progress"
    service = server.app.state.documents
    budget = service.budget_bytes
    service.budget_bytes = service.used_bytes() + 1000
    try:  # refused before the stream starts: a plain 507
        assert_error(c.post("/v1/documents", json={"text": DOC, "stream": True}), 507, code="document_budget_exceeded")
    finally:
        service.budget_bytes = budget
    assert_error(c.post("/v1/documents", json={"text": "", "stream": True}), 400, param="text")
    assert_error(c.post("/v1/documents", json={"text": DOC, "stream": "yes"}), 400, param="stream")
    assert_error(c.post("/v1/documents", files={"file": ("d.txt", b"x")}, data={"stream": "1"}), 400, param="stream")
    form = upload_events(c.post("/v1/documents", files={"file": ("d.txt", DOC.encode())}, data={"stream": "true"}))
    assert form[-1]["object"] == "document"


def test_bad_uploads_are_400s(server, assert_error):
    c = http(server)
    assert_error(c.post("/v1/documents", json={"text": ""}), 400, param="text")
    assert_error(c.post("/v1/documents", json={"text": DOC, "ttl_s": -1}), 400, param="ttl_s")
    assert_error(c.post("/v1/documents", json={"text": DOC, "kv_mode": "tiny"}), 400, param="kv_mode")
    assert_error(c.post("/v1/documents", content=b"{", headers={"content-type": "application/json"}), 400)
    assert_error(httpx.post(server.url + "/v1/documents", json={"text": DOC}), 401)


def test_ttl_expiry(server, assert_error):
    service = server.app.state.documents
    d = upload(server, ttl_s=60)
    c = http(server)
    assert c.get(f"/v1/documents/{d['id']}").status_code == 200
    real = service.clock
    service.clock = lambda: real() + 61  # 61 s later, without waiting for them
    try:
        assert_error(c.get(f"/v1/documents/{d['id']}"), 404, code="document_not_found")
        assert d["id"] not in [x["id"] for x in c.get("/v1/documents").json()["data"]]
        with pytest.raises(openai.NotFoundError):
            ask(oa(server), d["id"])
    finally:
        service.clock = real


def test_ttl_expiry_through_the_sdk(server):
    service = server.app.state.documents
    with lc.Client(base_url=server.url, api_key=KEY_A, max_retries=0) as client:
        doc = client.documents.upload(DOC, name="short-lived", ttl_s=60)
        assert doc.info.ttl_s == 60 and doc.info.expires_at == doc.info.created_at + 60
        assert doc.ask("Who?", max_tokens=2).text is not None
        real = service.clock
        service.clock = lambda: real() + 61  # 61 s later, without waiting for them
        try:
            with pytest.raises(lc.NotFoundError):
                client.documents.retrieve(doc.id)
            with pytest.raises(lc.NotFoundError):
                doc.ask("Who?", max_tokens=2)
            assert doc.id not in [x.id for x in client.documents.list()]
        finally:
            service.clock = real


def test_a_key_never_sees_another_keys_documents(server, assert_error):
    d = upload(server, KEY_A)
    b = http(server, KEY_B)
    assert_error(b.get(f"/v1/documents/{d['id']}"), 404, code="document_not_found")
    assert d["id"] not in [x["id"] for x in b.get("/v1/documents").json()["data"]]
    with pytest.raises(openai.NotFoundError):
        ask(oa(server, KEY_B), d["id"])
    assert_error(b.delete(f"/v1/documents/{d['id']}"), 404, code="document_not_found")
    with lc.Client(base_url=server.url, api_key=KEY_B, max_retries=0) as sdk_b:  # the same through the SDK
        assert d["id"] not in [x.id for x in sdk_b.documents.list()]
        for call in (lambda: sdk_b.documents.retrieve(d["id"]), lambda: sdk_b.documents.delete(d["id"]),
                     lambda: sdk_b.chat.completions.create(messages=[{"role": "user", "content": "Question: ?"}],
                                                           max_tokens=2, extra_body={"document_id": d["id"]})):
            with pytest.raises(lc.NotFoundError) as err:
                call()
            assert err.value.status_code == 404 and err.value.code == "document_not_found"
    assert http(server, KEY_A).get(f"/v1/documents/{d['id']}").status_code == 200  # still there for A


def test_upload_past_the_budget_is_507_naming_what_to_free(server, assert_error):
    service = server.app.state.documents
    budget = service.budget_bytes
    service.budget_bytes = service.used_bytes() + 1000  # less than one more document
    try:
        r = http(server).post("/v1/documents", json={"text": DOC})
        err = assert_error(r, 507, code="document_budget_exceeded")
        assert "doc-" in err["message"] and "free" in err["message"]
        assert r.headers["x-should-retry"] == "false"  # clients retry 5xx; this one waits for a delete
        sent: list = []  # the SDK sends it once, not 1 + max_retries times
        with httpx.Client(event_hooks={"request": [sent.append]}) as h, pytest.raises(lc.InsufficientStorageError):
            lc.Client(base_url=server.url + "/v1", api_key=KEY_A, max_retries=2, http_client=h).documents.upload(DOC)
        assert len(sent) == 1
    finally:
        service.budget_bytes = budget


def test_pinned_documents_survive_the_prefix_caches_eviction(server):
    d = upload(server)
    llm = server.engine.engine
    llm.prefix_cache.make_room(llm.kv.allocator.usable)  # evict everything that may be evicted
    assert any(e.pins and e.length == d["tokens"] for e in llm.prefix_cache.entries)


def test_sdk_upload_returns_a_handle_that_asks(server):
    from lighthouse_client import Client

    with Client(base_url=server.url, api_key=KEY_A, max_retries=0) as client:
        doc = client.documents.upload(DOC, name="sdk")
        answer = doc.ask("Who?", max_tokens=6)
        assert answer.usage.model_extra["prompt_tokens_details"]["cached_tokens"] == doc.info.tokens
        assert doc.id in [x.id for x in client.documents.list()]
        assert doc.delete().deleted


def test_async_sdk_upload_and_ask(server):
    import asyncio

    from lighthouse_client import AsyncClient

    async def main():
        async with AsyncClient(base_url=server.url, api_key=KEY_A, max_retries=0) as client:
            doc = await client.documents.upload(DOC, name="async")
            answer = await doc.ask("Who?", max_tokens=6)
            assert answer.text is not None
            assert (await client.documents.retrieve(doc.id)).tokens == doc.info.tokens
            await doc.delete()

    asyncio.run(main())


# ---- the disk store -------------------------------------------------------------------------------------------

def stored(server, doc_id, key=None) -> bool:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + f"/v1/documents/{doc_id}", headers=headers).json()["stored"]


def _answer(url, doc_id):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = ask(client, doc_id)
    return r.choices[0].message.content, [t.logprob for t in r.choices[0].logprobs.content], r.usage


@pytest.mark.parametrize("copy_chunk_bytes", [None, 1])  # 1: the K/V copied a block at a time, both ways
def test_restart_with_the_store_gives_the_same_answers_and_logprobs(tiny_checkpoint, loopback_server,
                                                                     settings_for, tmp_path, monkeypatch,
                                                                     copy_chunk_bytes, wait_until):
    if copy_chunk_bytes is not None:
        monkeypatch.setattr(disk_tier, "COPY_CHUNK_BYTES", copy_chunk_bytes)
    store = tmp_path / "store"
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(store))) as s:
        d = upload(s)
        assert wait_until(lambda: stored(s, d["id"]), timeout=60)  # the copy is written in the background
        before = _answer(s.url, d["id"])
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(store))) as s:
        listed = httpx.get(s.url + "/v1/documents").json()["data"]
        assert [x["id"] for x in listed] == [d["id"]] and not listed[0]["pinned"]
        after = _answer(s.url, d["id"])
        assert after[2].prompt_tokens_details.cached_tokens == d["tokens"]  # restored, not prefilled
        assert httpx.get(s.url + f"/v1/documents/{d['id']}").json()["pinned"]
    assert before[:2] == after[:2]


def test_a_changed_checkpoint_ignores_the_store(tiny_checkpoint, loopback_server, settings_for, tmp_path,
                                               make_checkpoint, assert_error):
    store = tmp_path / "store"
    other = make_checkpoint(tmp_path / "other", seed=1)
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(store))) as s:
        d = upload(s)
    with loopback_server(settings_for(other, served_model_name="tiny", document_store=str(store))) as s:
        assert httpx.get(s.url + "/v1/documents").json()["data"] == []
        assert_error(httpx.get(s.url + f"/v1/documents/{d['id']}"), 404, code="document_not_found")
    one_weight = shutil.copytree(tiny_checkpoint, tmp_path / "one-weight")  # the same model but one weight
    weights = next(one_weight.glob("*.safetensors"))
    tensors = safetensors.torch.load_file(weights)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1.0
    safetensors.torch.save_file(tensors, weights, metadata={"format": "pt"})
    with loopback_server(settings_for(one_weight, served_model_name="tiny", document_store=str(store))) as s:
        assert httpx.get(s.url + "/v1/documents").json()["data"] == []
        with pytest.raises(openai.NotFoundError):
            ask(openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120), d["id"])
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "same")  # the same bytes elsewhere: the same identity
    with loopback_server(settings_for(copy, served_model_name="tiny", document_store=str(store))) as s:
        assert [x["id"] for x in httpx.get(s.url + "/v1/documents").json()["data"]] == [d["id"]]


# ---- compact documents ------------------------------------------------------------------------------------------

def test_a_compact_document_pins_less_and_its_questions_reuse_it(server):
    full, compact = upload(server, name="full"), upload(server, name="compact", kv_mode="compact")
    assert compact["kv_mode"] == "compact" and compact["pinned"] and compact["tokens"] == full["tokens"]
    llm = server.engine.engine
    held = {e.compact: len(e.all_blocks()) * llm.kv.shape.bytes_per_block for e in llm.prefix_cache.entries
            if e.pins and e.length == compact["tokens"]}
    # each reports its own entry (the same tokens are pinned twice: full, and as the selected context)
    assert (full["kv_bytes"], compact["kv_bytes"]) == (held[False], held[True]) and held[False] != held[True]
    client = oa(server)
    first, again = ask(client, compact["id"]), ask(client, compact["id"])
    assert first.usage.prompt_tokens_details.cached_tokens == compact["tokens"]  # not prefilled again
    assert first.choices[0].message.content == again.choices[0].message.content
    assert [t.logprob for t in first.choices[0].logprobs.content] == pytest.approx(
        [t.logprob for t in again.choices[0].logprobs.content], abs=1e-4)
    assert http(server).delete(f"/v1/documents/{compact['id']}").status_code == 200  # unpins the compact entry only
    kinds = {e.compact for e in llm.prefix_cache.entries if e.pins and e.length == compact["tokens"]}
    assert False in kinds and True not in kinds
    assert ask(client, full["id"]).usage.prompt_tokens_details.cached_tokens == full["tokens"]


def test_restart_with_the_store_restores_a_compact_document_with_the_same_answers(tiny_checkpoint, loopback_server,
                                                                                  settings_for, tmp_path, wait_until):
    store = tmp_path / "store"
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(store))) as s:
        d = upload(s, kv_mode="compact")
        assert d["kv_mode"] == "compact" and wait_until(lambda: stored(s, d["id"]), timeout=60)
        before = _answer(s.url, d["id"])
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(store))) as s:
        after = _answer(s.url, d["id"])
        assert after[2].prompt_tokens_details.cached_tokens == d["tokens"]  # restored, not prefilled
        assert any(e.pins and e.compact for e in s.engine.engine.prefix_cache.entries)
    assert before[:2] == after[:2]


def test_the_same_document_uploaded_again_by_its_key_is_pinned_again_not_prefilled(server, monkeypatch):
    """A second upload of the same text by the same key (a retry, say) adds a pin to the first's entry: no prefill
    (the engine starts none; its progress says all of it came from the cache). Each document answers, and deleting
    one leaves the other's entry. Another key's identical upload is prefilled for itself."""
    text = DOC[::-1]  # tokens no other test uploads
    engine = server.engine.engine
    prefills = []
    inner = engine.runner.start_prefill
    monkeypatch.setattr(engine.runner, "start_prefill",
                        lambda kv, ids, plan, **kw: prefills.append(len(ids)) or inner(kv, ids, plan, **kw))
    known = list(engine.prefix_cache.entries)
    first = upload(server, text=text)
    entry = next(e for e in engine.prefix_cache.entries if e.pins and all(e is not k for k in known))
    assert prefills == [first["tokens"]]
    pins = entry.pins
    events = upload_events(http(server).post("/v1/documents", json={"text": text, "stream": True}))
    *progress, again = events
    assert prefills == [first["tokens"]], "not prefilled again"
    assert [p["prompt_progress"]["cache"] for p in progress][-1] == again["tokens"] == first["tokens"]
    assert entry.pins == pins + 1 and again["pinned"] and again["id"] != first["id"]
    c = http(server)
    assert c.delete(f"/v1/documents/{first['id']}").status_code == 200
    assert entry in engine.prefix_cache.entries and entry.pins == pins
    reply = ask(oa(server), again["id"])
    assert reply.usage.prompt_tokens_details.cached_tokens == again["tokens"]
    other = upload(server, KEY_B, text=text)
    assert prefills[-1] == other["tokens"], "another key's upload prefills for itself"
    for key, d in ((KEY_A, again), (KEY_B, other)):
        assert http(server, key).delete(f"/v1/documents/{d['id']}").status_code == 200
