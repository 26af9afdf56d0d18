"""Citation scores (lighthouse/engine/citations.py) equal an independent reference: transformers' eager attention
weights of the whole sequence (document, question, answer), read at the queries that produced the answer's tokens,
on the document's positions, averaged over heads, those queries and the chosen layers; whatever the key chunk."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.citations import answer_attention, citation_layers
from lighthouse.engine.documents import DocumentPins
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams


def tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


DOC, QUESTION = tokens(300, 1), tokens(20, 2)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, tiny_llm):
    return tiny_llm(tiny_checkpoint)


def generate(eng, rid, prompt, opts, max_tokens=6) -> list[int]:
    eng.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), opts)
    out = []
    while eng.has_unfinished():
        out += [t for o in eng.step() if o.request_id == rid for t in o.token_ids]
    return out


def reference(ckpt, ids: list[int], P: int, answer_len: int, layers: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        att = hf(torch.tensor([ids]), output_attentions=True).attentions  # per layer (1, H, N, N)
    N = len(ids)
    q0, q1 = N - answer_len - 1, N - 1  # the queries that produced the answer's tokens
    total = sum(att[i][0, :, q0:q1, :P].sum(dim=(0, 1)) for i in layers)
    return total / (att[0].shape[1] * (q1 - q0) * len(layers))


def test_scores_equal_transformers_attention_weights_at_the_answers_queries(llm, tiny_checkpoint):
    eng = llm.engine
    eng.prefix_cache.clear()
    dense = RequestOptions(prefill="dense")
    generate(eng, "doc", DOC, RequestOptions(prefill="dense", pin_prompt=True), 1)
    answer = generate(eng, "ask", DOC + QUESTION, dense)
    pins = DocumentPins(eng)
    layers = citation_layers(eng.model.config)
    assert layers == [0, 1]  # every layer
    got = torch.tensor(pins.answer_attention(DOC, "full", DOC + QUESTION, answer))
    ref = reference(tiny_checkpoint, DOC + QUESTION + answer, len(DOC), len(answer), layers)
    assert got.shape == (len(DOC),)
    assert torch.allclose(got, ref, atol=1e-6, rtol=1e-4), (got - ref).abs().max()
    entry = pins.find(DOC, "full")
    every = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(DOC), QUESTION + answer, len(answer),
                             layers=[1], key_chunk=256)  # two key chunks; one layer
    ref_every = reference(tiny_checkpoint, DOC + QUESTION + answer, len(DOC), len(answer), [1])
    assert torch.allclose(every, ref_every, atol=1e-6, rtol=1e-4), (every - ref_every).abs().max()
    assert 0 < float(every.sum()) <= 1  # a share of the answer's attention


def test_compact_documents_and_other_layouts_are_refused(llm):
    eng = llm.engine
    eng.prefix_cache.clear()
    doc = tokens(600, 3)  # sparse-eligible, as a compact document is
    generate(eng, "cdoc", doc, RequestOptions(kv_mode="compact", dense_tail_tokens=0, pin_prompt=True), 1)
    pins = DocumentPins(eng)
    with pytest.raises(InvalidRequest, match="kv_mode 'full'"):
        pins.answer_attention(doc, "compact", doc + QUESTION, [65, 66])
    generate(eng, "fdoc", DOC, RequestOptions(prefill="dense", pin_prompt=True), 1)
    with pytest.raises(InvalidRequest, match="layout"):
        pins.answer_attention(DOC, "full", [1] + DOC + QUESTION, [65, 66])
    assert pins.answer_attention(tokens(50, 9), "full", tokens(60, 9), [65]) is None  # not pinned
