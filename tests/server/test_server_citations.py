"""`"citations": true`: the document spans an answer drew on most, as character offsets and text. Spans are the
document's sentences (long ones windowed), scored by the attention the engine measured (tests/engine/test_citations.py
checks the scores against transformers); through HTTP, for a document_id, a prefix hit, a stream, n > 1 and a compact
document, and the 400s for a request without a document to cite, in another layout, or of a compact document stored
without its context's windows."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from lighthouse_server.citations import MAX_SPAN_CHARS, sentence_spans, top_spans

SENTENCES = [f"Sentence number {i} says {'abcdefghij'[i % 10] * 5}." for i in range(30)]
DOC = " ".join(SENTENCES)  # ~900 characters


def test_sentence_spans_cover_sentences_and_window_long_ones():
    text = "One two. Three?  Four!\nFive " + "x" * 700
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans[:4]] == ["One two.", "Three?", "Four!", "Five " + "x" * 295]
    assert all(b - a <= MAX_SPAN_CHARS for a, b in spans) and spans[-1][1] == len(text)


def test_top_spans_rank_sentences_by_their_tokens_scores(tiny_checkpoint):
    from lighthouse.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_checkpoint)
    head = [256, 1, 2]  # what precedes the document in its prefix (chat markup)
    prefix = head + tok(DOC, add_special_tokens=False)["input_ids"]
    scores = [0.0] * len(prefix)
    s7, s3 = DOC.index(SENTENCES[7]), DOC.index(SENTENCES[3])
    for c in range(s7, s7 + len(SENTENCES[7])):
        scores[len(head) + c] = 0.01  # byte tokens: one per character
    scores[len(head) + s3] = 0.05
    got = top_spans(tok, DOC, prefix, scores, 2)
    assert [g["text"] for g in got] == [SENTENCES[7], SENTENCES[3]]
    assert got[0]["start"] == s7 and got[0]["end"] == s7 + len(SENTENCES[7])
    assert got[0]["score"] == pytest.approx(0.01 * len(SENTENCES[7])) and got[1]["score"] == pytest.approx(0.05)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, loopback_server, settings_for):
    with loopback_server(settings_for(tiny_checkpoint, served_model_name="tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def doc(server):
    r = httpx.post(server.url + "/v1/documents", json={"text": DOC}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def check_spans(spans: list[dict], k: int) -> None:
    assert 0 < len(spans) <= k
    assert all(DOC[s["start"] : s["end"]] == s["text"] and s["text"] for s in spans)
    scores = [s["score"] for s in spans]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1


def test_a_document_question_returns_its_top_spans(server, doc):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Question: what does sentence 7 say?"}], max_tokens=6,
        temperature=0, n=2, extra_body={"document_id": doc["id"], "citations": True, "citations_top_k": 4})
    for choice in r.choices:
        check_spans(choice.model_extra["citations"], 4)


def test_a_prompt_starting_with_a_document_is_cited_and_a_stream_gets_a_citations_chunk(server, doc):
    ids = httpx.post(server.url + "/v1/documents", json={"text": DOC}).json()  # (the same text: the same prefix)
    prefix = server.app.state.documents.docs[ids["id"]].prefix_ids
    body = {"model": "tiny", "prompt": prefix + [10, 65, 66], "max_tokens": 4, "temperature": 0, "citations": True,
            "stream": True}
    with httpx.Client(timeout=120) as c, c.stream("POST", server.url + "/v1/completions", json=body) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    cited = [e for e in events if "citations" in e]
    assert len(cited) == 1 and cited[0]["choices"] == [] and cited[0]["citations"][0]["index"] == 0
    check_spans(cited[0]["citations"][0]["spans"], 3)
    assert events.index(cited[0]) == len(events) - 1  # after the last token


def test_a_compact_document_is_cited_too(server):
    """kv_mode compact: its Lighthouse layers keep the selected context, whose entries' windows the scores come from."""
    c = httpx.Client(base_url=server.url, timeout=120)
    compact = c.post("/v1/documents", json={"text": DOC, "kv_mode": "compact"}).json()
    service = server.app.state.documents
    entry = service.pins.find(service.docs[compact["id"]].prefix_ids, "compact")
    assert entry is not None and entry.compact and entry.ctx_spans is not None  # sparse-prefilled, not kept in full
    ask = {"model": "tiny", "max_tokens": 4, "temperature": 0, "citations": True, "citations_top_k": 3,
           "document_id": compact["id"], "messages": [{"role": "user", "content": "Question: what does sentence 7 say?"}]}
    r = c.post("/v1/chat/completions", json=ask)
    assert r.status_code == 200, r.text
    check_spans(r.json()["choices"][0]["citations"], 3)


def test_citations_without_a_document_or_with_another_layout_are_400s(server, assert_error):
    c = httpx.Client(base_url=server.url, timeout=120)
    body = {"model": "tiny", "prompt": "no document here", "max_tokens": 2, "citations": True}
    assert_error(c.post("/v1/completions", json=body), 400, param="citations")
    ask = {"model": "tiny", "max_tokens": 2, "citations": True,
           "document_id": httpx.post(server.url + "/v1/documents", json={"text": DOC}).json()["id"],
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Question: which?"}]}
    assert_error(c.post("/v1/chat/completions", json=ask), 400, param="citations", contains="layout")


def test_a_compact_document_from_a_store_without_its_windows_is_a_400_naming_the_fix(
        tiny_checkpoint, loopback_server, settings_for, tmp_path, assert_error):
    """A store written before ctx_spans were kept (rewritten here without them) loads after a restart and answers
    questions; citations of it say to upload it again. A stored one with them is cited after a restart."""
    from dataclasses import replace

    settings = settings_for(tiny_checkpoint, served_model_name="tiny", document_store=str(tmp_path / "store"))
    with loopback_server(settings) as s:
        c = httpx.Client(base_url=s.url, timeout=120)
        old, new = (c.post("/v1/documents", json={"text": DOC + x, "kv_mode": "compact"}).json() for x in ("", " More."))
        store = s.app.state.documents.store
        data, text = store.load(old["id"])
        store.save(old["id"], replace(data, ctx_spans=None), store.index()[old["id"]]["meta"], text)
    with loopback_server(settings) as s:
        c = httpx.Client(base_url=s.url, timeout=120)
        ask = {"model": "tiny", "max_tokens": 2, "citations": True, "document_id": old["id"],
               "messages": [{"role": "user", "content": "Question: which?"}]}
        assert_error(c.post("/v1/chat/completions", json=ask), 400, param="citations", code="citations_unavailable",
                     contains="upload the document again")
        assert c.post("/v1/chat/completions", json={**ask, "citations": False}).status_code == 200
        r = c.post("/v1/chat/completions", json={**ask, "document_id": new["id"]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["citations"]
