"""The document store's copy is written in the background: an upload returns once the document is pinned (it
answers at once, `stored` false), `stored` turns true when the copy is on disk, a document deleted while its copy
is written leaves nothing in the store, and stopping the server waits for copies still being written. The copy is
held back by a gate the test opens (no timing)."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

DOC = "".join(chr(33 + (i * 7919) % 90) for i in range(900))


class Gate:
    """Wraps a store's save: each call waits until the gate opens (60 s at most, so a failing test cannot hang)."""

    def __init__(self, store):
        self.opened, self.entered, self.inner = threading.Event(), threading.Event(), store.save
        store.save = self

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.opened.wait(60)
        return self.inner(*args, **kwargs)


@pytest.fixture
def server(tiny_checkpoint, loopback_server, settings_for, tmp_path):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny",
                                      document_store=str(tmp_path / "store"))) as s:
        yield s


def doc(server, doc_id: str) -> dict:
    return httpx.get(server.url + f"/v1/documents/{doc_id}").json()


def test_an_upload_answers_before_its_copy_is_written(server, wait_until):
    service = server.app.state.documents
    gate = Gate(service.store)
    d = httpx.post(server.url + "/v1/documents", json={"text": DOC}, timeout=120).json()
    assert d["pinned"] and not d["stored"] and gate.entered.wait(60)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Question: ?"}],
                                       max_tokens=2, extra_body={"document_id": d["id"]})
    assert r.usage.prompt_tokens_details.cached_tokens == d["tokens"]  # asked while its copy is being written
    assert not doc(server, d["id"])["stored"] and d["id"] not in service.store.index()
    gate.opened.set()
    assert wait_until(lambda: doc(server, d["id"])["stored"], timeout=60)
    assert d["id"] in service.store.index()


def test_a_document_deleted_while_its_copy_is_written_leaves_nothing_in_the_store(server, wait_until):
    service = server.app.state.documents
    gate = Gate(service.store)
    d = httpx.post(server.url + "/v1/documents", json={"text": DOC}, timeout=120).json()
    assert gate.entered.wait(60)
    assert httpx.delete(server.url + f"/v1/documents/{d['id']}").status_code == 200
    gate.opened.set()
    assert wait_until(lambda: not service.saving, timeout=60)
    assert d["id"] not in service.store.index() and not list(service.store.root.glob(f"{d['id']}*"))
    assert httpx.get(server.url + f"/v1/documents/{d['id']}").status_code == 404


def test_stopping_the_server_waits_for_copies_being_written(tiny_checkpoint, loopback_server, settings_for,
                                                            tmp_path):
    settings = settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(tmp_path / "store"))
    with loopback_server(settings) as s:
        service = s.app.state.documents
        gate = Gate(service.store)
        d = httpx.post(s.url + "/v1/documents", json={"text": DOC}, timeout=120).json()
        assert gate.entered.wait(60) and service.saving  # still being written as the server stops
        threading.Timer(0.5, gate.opened.set).start()
    assert d["id"] in service.store.index()
    with loopback_server(settings) as s:  # and the next server lists it
        assert [x["id"] for x in httpx.get(s.url + "/v1/documents").json()["data"]] == [d["id"]]


def test_a_ttl_changed_while_the_copy_is_written_reaches_the_store(server, wait_until):
    service = server.app.state.documents
    gate = Gate(service.store)
    d = httpx.post(server.url + "/v1/documents", json={"text": DOC, "ttl_s": 60}, timeout=120).json()
    assert gate.entered.wait(60)
    got = httpx.patch(server.url + f"/v1/documents/{d['id']}", json={"ttl_s": 900}).json()
    gate.opened.set()
    assert wait_until(lambda: doc(server, d["id"])["stored"] and not service.saving, timeout=60)
    meta = service.store.index()[d["id"]]["meta"]
    assert meta["ttl_s"] == 900 and meta["expires"] == pytest.approx(got["expires_at"], abs=1)


def test_copies_are_made_one_at_a_time(server, wait_until, monkeypatch):
    """Uploads in a row: the second document's K/V are copied off the device only once the first's copy is written
    (one host copy at a time, however fast uploads come)."""
    service = server.app.state.documents
    gate = Gate(service.store)
    exports = []
    inner = service.pins.export
    monkeypatch.setattr(service.pins, "export", lambda *a, **kw: exports.append(a[0][:4]) or inner(*a, **kw))
    first = httpx.post(server.url + "/v1/documents", json={"text": DOC}, timeout=120).json()
    assert gate.entered.wait(60)
    second = httpx.post(server.url + "/v1/documents", json={"text": DOC[::-1]}, timeout=120).json()
    assert len(exports) == 1 and set(service.saving) == {first["id"], second["id"]}
    gate.opened.set()
    assert wait_until(lambda: not service.saving, timeout=60)
    assert len(exports) == 2 and all(doc(server, d["id"])["stored"] for d in (first, second))
