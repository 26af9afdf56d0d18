"""PATCH /v1/documents/{id}: a document's TTL set anew, counted from now (Gemini's cachedContents update), over HTTP
and through the SDK; only its owner may; the stored copy keeps the new TTL across a restart. Time is the service's
clock, moved by the test (no waiting)."""

from __future__ import annotations

import httpx
import lighthouse_client as lc
import pytest

DOC = "".join(chr(33 + (i * 7919) % 90) for i in range(600))
KEY_A, KEY_B = "sk-a", "sk-b"


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny", api_keys=[KEY_A, KEY_B])) as s:
        yield s


@pytest.fixture
def clock(server):
    """later(seconds): the service's clock moved that far ahead of the real one (restored after the test)."""
    service = server.app.state.documents
    real = service.clock
    yield lambda s: setattr(service, "clock", lambda: real() + s)
    service.clock = real


def http(server, key=KEY_A) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_a_new_ttl_counts_from_now_and_keeps_the_document(server, clock):
    c = http(server)
    d = c.post("/v1/documents", json={"text": DOC, "ttl_s": 60}).json()
    clock(50)
    r = c.patch(f"/v1/documents/{d['id']}", json={"ttl_s": 600})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["ttl_s"] == 600 and got["expires_at"] >= d["created_at"] + 50 + 599 and got["id"] == d["id"]
    clock(120)  # past the upload's 60 s: still there
    assert c.get(f"/v1/documents/{d['id']}").json()["expires_at"] == got["expires_at"]
    clock(700)  # past the new 600 s
    assert c.get(f"/v1/documents/{d['id']}").status_code == 404


def test_a_null_ttl_keeps_it_until_deleted(server, clock):
    c = http(server)
    d = c.post("/v1/documents", json={"text": DOC, "ttl_s": 60}).json()
    got = c.patch(f"/v1/documents/{d['id']}", json={"ttl_s": None}).json()
    assert got["ttl_s"] is None and got["expires_at"] is None
    clock(10**6)
    assert c.get(f"/v1/documents/{d['id']}").status_code == 200
    assert c.delete(f"/v1/documents/{d['id']}").status_code == 200


@pytest.mark.parametrize("body,param,words", [({}, "ttl_s", "required"), ({"ttl_s": 59}, "ttl_s", "60"),
                                              ({"ttl_s": "long"}, "ttl_s", "number")])
def test_a_bad_ttl_is_a_400_and_changes_nothing(server, assert_error, body, param, words):
    c = http(server)
    d = c.post("/v1/documents", json={"text": DOC, "ttl_s": 60}).json()
    assert_error(c.patch(f"/v1/documents/{d['id']}", json=body), 400, param=param, contains=words)
    r = c.patch(f"/v1/documents/{d['id']}", content=b'{"ttl_s": Infinity}', headers={"content-type": "application/json"})
    assert_error(r, 400, param="ttl_s")
    assert c.get(f"/v1/documents/{d['id']}").json()["expires_at"] == d["expires_at"]
    c.delete(f"/v1/documents/{d['id']}")


def test_only_the_owner_may_change_it(server, assert_error):
    d = http(server).post("/v1/documents", json={"text": DOC, "ttl_s": 60}).json()
    assert_error(http(server, KEY_B).patch(f"/v1/documents/{d['id']}", json={"ttl_s": None}), 404,
                 code="document_not_found")
    assert_error(httpx.patch(server.url + f"/v1/documents/{d['id']}", json={"ttl_s": None}), 401)
    assert http(server).get(f"/v1/documents/{d['id']}").json()["expires_at"] == d["expires_at"]
    http(server).delete(f"/v1/documents/{d['id']}")


def test_the_sdk_updates_a_handle(server, clock):
    with lc.Client(base_url=server.url, api_key=KEY_A, max_retries=0) as client:
        doc = client.documents.upload(DOC, ttl_s=60)
        info = doc.update(ttl_s=3600)
        assert info is doc.info and info.ttl_s == 3600 and info.expires_at >= info.created_at + 3599
        clock(120)
        assert client.documents.retrieve(doc.id).id == doc.id
        with pytest.raises(lc.BadRequestError):
            client.documents.update(doc.id, ttl_s=10)
        assert client.documents.update(doc.id, ttl_s=None).expires_at is None
        doc.delete()


def test_the_stored_copy_keeps_the_new_ttl_across_a_restart(tiny_checkpoint, loopback_server, settings_for, tmp_path,
                                                           wait_until):
    settings = settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(tmp_path / "store"))
    with loopback_server(settings) as s:
        c = httpx.Client(base_url=s.url, timeout=120)
        d = c.post("/v1/documents", json={"text": DOC, "ttl_s": 60}).json()
        assert wait_until(lambda: c.get(f"/v1/documents/{d['id']}").json()["stored"], timeout=60)
        got = c.patch(f"/v1/documents/{d['id']}", json={"ttl_s": 7200}).json()
    with loopback_server(settings) as s:
        again = httpx.get(s.url + f"/v1/documents/{d['id']}").json()
        assert (again["ttl_s"], again["expires_at"]) == (7200, got["expires_at"])
