"""The SDK's `documents.upload(on_progress=...)` through a real server (the bundled tiny checkpoint, in-process):
the prefill's progress reaches the callback in order, the handle is what a plain upload returns, and failures raise
the SDK's typed errors with the server's code, both a refusal before the stream and a failure inside it."""

from __future__ import annotations

import asyncio

import pytest

import lighthouse_client as lc
from lighthouse.engine.errors import OUT_OF_MEMORY
from lighthouse_server.errors import from_failure


def text(seed: int) -> str:
    """900 ASCII bytes (~930 tokens with the chat markup), a different document per seed: nothing cached."""
    return "".join(chr(33 + (i * 7919 + seed * 104729) % 90) for i in range(900))


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny")) as s:
        yield s


def client(server) -> lc.Client:
    return lc.Client(base_url=server.url, max_retries=0, timeout=120)


def async_client(server) -> lc.AsyncClient:
    return lc.AsyncClient(base_url=server.url, max_retries=0, timeout=120)


def assert_progress_in_order(seen: list, tokens: int) -> None:
    processed = [p.processed for p in seen]
    assert len(seen) >= 2 and all(p.total == tokens for p in seen), seen
    assert processed == sorted(processed) and processed[-1] == tokens, processed


def same_document(info) -> dict:
    """What two uploads of one text share: all but the id, the times and how long the prefill took."""
    return info.model_dump(exclude={"id", "created_at", "expires_at", "seconds"})


def test_progress_arrives_in_order_and_the_handle_is_what_a_plain_upload_returns(server):
    seen = []
    with client(server) as c:
        streamed = c.documents.upload(text(1), name="report", on_progress=seen.append)
        plain = c.documents.upload(text(1), name="report")
        answer = streamed.ask("Who?", max_tokens=4)
    assert_progress_in_order(seen, streamed.info.tokens)
    assert seen[0].cache == 0 and seen[0].processed == 0  # nothing was cached: the whole document was prefilled
    assert streamed.id != plain.id and streamed.info.tokens == plain.info.tokens > 900
    assert same_document(streamed.info) == same_document(plain.info)
    assert streamed.info.pinned and streamed.info.seconds > 0
    assert answer.usage.model_extra["prompt_tokens_details"]["cached_tokens"] == streamed.info.tokens


def test_async_upload_awaits_its_callback_and_gets_the_same_document(server):
    seen = []

    async def record(progress):
        await asyncio.sleep(0)
        seen.append(progress)

    async def main():
        async with async_client(server) as c:
            doc = await c.documents.upload(text(2), on_progress=record)
            return doc, await c.documents.retrieve(doc.id)

    doc, retrieved = asyncio.run(main())
    assert_progress_in_order(seen, doc.info.tokens)
    assert doc.info == retrieved


def test_refusals_before_the_stream_raise_the_http_errors_and_never_call_back(server, monkeypatch):
    seen = []
    service = server.app.state.documents
    with client(server) as c:
        with pytest.raises(lc.BadRequestError) as bad:
            c.documents.upload(text(3), kv_mode="tiny", on_progress=seen.append)
        monkeypatch.setattr(service, "budget_bytes", service.used_bytes() + 1000)  # less than one more document
        with pytest.raises(lc.InternalServerError) as full:
            c.documents.upload(text(3), on_progress=seen.append)
    assert bad.value.status_code == 400 and bad.value.param == "kv_mode"
    assert full.value.status_code == 507 and full.value.code == "document_budget_exceeded"
    assert "free" in full.value.message and seen == []


@pytest.fixture
def prefill_fails_midway(server, monkeypatch):
    """The engine fails a document's prefill after its first progress event (out of memory): the service's prefill
    loop is wrapped to end as it does when the engine reports that failure; the rest is real."""
    service = server.app.state.documents
    real = service._prefill

    async def fail_after_the_first_event(d, options):
        events = real(d, options)
        try:
            yield await events.__anext__()
        finally:
            await events.aclose()  # (stops the engine's request)
        raise from_failure("the document's prefill failed: out of memory", OUT_OF_MEMORY)

    monkeypatch.setattr(service, "_prefill", fail_after_the_first_event)


def test_a_failure_inside_the_stream_raises_what_the_plain_upload_raises(server, prefill_fails_midway):
    seen, async_seen = [], []
    with client(server) as c:
        with pytest.raises(lc.ServiceUnavailableError) as plain:
            c.documents.upload(text(4))
        with pytest.raises(lc.ServiceUnavailableError) as streamed:
            c.documents.upload(text(4), name="failed", on_progress=seen.append)
        listed = [d.name for d in c.documents.list()]

    async def main():
        async with async_client(server) as c:
            await c.documents.upload(text(4), on_progress=async_seen.append)

    with pytest.raises(lc.ServiceUnavailableError) as in_async:
        asyncio.run(main())
    assert len(seen) == len(async_seen) == 1  # the streams had started: the failures came as error events
    for err in (plain.value, streamed.value, in_async.value):
        assert err.status_code == 503 and err.code == "out_of_memory", err
        assert err.message == plain.value.message and "out of memory" in err.message
    assert "failed" not in listed  # the failed upload was not kept
