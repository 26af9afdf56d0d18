"""Synthetic documents in the chat layout: the same ids the server builds for the SDK's documents.ask."""

from __future__ import annotations

import random

import pytest

from lighthouse.tokenizer import END_HEADER_ID, EOS_ID, EOT_ID, START_HEADER_ID, byte_tokenizer
from lighthouse.train.data import SequenceStream
from lighthouse.train.synthetic import kv_doc, multihop_doc, passkey_doc
from lighthouse.train.synthetic_chat import SDK_SYSTEM, chat_ids

ASSISTANT_HEADER = [START_HEADER_ID, *b"assistant", END_HEADER_ID, *b"\n\n"]


def _prompt_end(ids: list[int]) -> int:
    for i in range(len(ids) - len(ASSISTANT_HEADER), -1, -1):
        if ids[i : i + len(ASSISTANT_HEADER)] == ASSISTANT_HEADER:
            return i + len(ASSISTANT_HEADER)
    raise AssertionError("no assistant header")


@pytest.mark.parametrize("system", [SDK_SYSTEM, None])
@pytest.mark.parametrize("make", [passkey_doc, kv_doc, multihop_doc])
def test_chat_ids_are_what_the_server_encodes_for_documents_ask(make, system):
    documents = pytest.importorskip("lighthouse_client.documents")
    rng = random.Random(3)
    doc = make(rng, 1500)
    ids, [(a, b)] = chat_ids(doc, 2000, rng, system)
    assert len(ids) == 2000
    question, lead, answer = doc.chat_qa
    # the prompt part: rebuilt from the document text the way the SDK and the server do it
    k = _prompt_end(ids)
    text = bytes(t for t in ids[:k] if t < 256).decode("ascii")
    document = text.split("user\n\n", 1)[1].rsplit("\n\nQuestion: ", 1)[0]
    assert document.endswith(doc.text[: doc.body_end])  # the whole document body, filler prepended
    tok = byte_tokenizer()
    messages = documents.document_messages(document, question, system=system)
    server = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    assert ids[:k] == server
    # then the answer: lead-in, the answer (its span), ".", end of turn, EOS
    assert bytes(ids[k:a]).decode() == lead and bytes(ids[a:b]).decode() == answer
    assert ids[b:] == [*b".", EOT_ID, EOS_ID]


def test_chat_ids_refuse_a_document_that_does_not_fit():
    rng = random.Random(0)
    doc = passkey_doc(rng, 1000)
    with pytest.raises(ValueError, match="needs"):
        chat_ids(doc, 1000, rng, SDK_SYSTEM)


def test_stream_mixes_chat_documents_in_at_the_asked_share_and_keeps_exact_lengths():
    plain = SequenceStream(4096, seed=1, tasks=("passkey", "kv"), chat_fraction=0.0)
    chat = SequenceStream(4096, seed=1, tasks=("passkey", "kv"), chat_fraction=0.5)
    n_chat = n_docs = 0
    for i in range(16):
        s = chat[i]
        assert s.input_ids.shape == (4096,)
        ids = s.input_ids.tolist()
        n_docs += ids.count(256)
        n_chat += sum(ids[j : j + len(ASSISTANT_HEADER)] == ASSISTANT_HEADER for j in range(len(ids)))
        # every answer span holds digits only
        digits = s.input_ids[s.answer_mask]
        assert bool(((digits >= ord("0")) & (digits <= ord("9"))).all())
        assert START_HEADER_ID not in plain[i].input_ids.tolist()
    assert 0.25 < n_chat / n_docs < 0.75, (n_chat, n_docs)
