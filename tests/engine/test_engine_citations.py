"""Citation scores (lighthouse/engine/citations.py) equal an independent reference: transformers' eager attention
weights of the whole sequence (document, question, answer) on the document's positions, per layer and head the mean
over the queries that produced the answer's tokens less the mean over the prompt's queries before them (kept where
positive), averaged over heads and the chosen layers; whatever the key chunk. And what the excess is for: positions
every query attends cancel, a needle the question also attends in other heads does not. Compact documents:
test_engine_citations_compact.py."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.citations import answer_attention, citation_layers, head_excess
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


def reference(ckpt, ids: list[int], P: int, answer_len: int, layers: list[int], excess: bool = True,
              baseline_queries: int = 1024) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        att = hf(torch.tensor([ids]), output_attentions=True).attentions  # per layer (1, H, N, N)
    N = len(ids)
    q0, q1 = N - answer_len - 1, N - 1  # the queries that produced the answer's tokens; [P, q0) the prompt's
    b0 = max(P, q0 - baseline_queries)
    total = torch.zeros(P)
    for i in layers:
        answer = att[i][0, :, q0:q1, :P].mean(dim=1)  # (H, P)
        baseline = att[i][0, :, b0:q0, :P].mean(dim=1) if excess and q0 > b0 else torch.zeros_like(answer)
        total += (answer - baseline).clamp_min(0).sum(dim=0)
    return total / (att[0].shape[1] * len(layers))


def test_scores_equal_transformers_attention_weights_in_excess_of_the_prompts(llm, tiny_checkpoint):
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
    plain = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(DOC), QUESTION + answer, len(answer),
                             excess=False, key_chunk=256)
    ref_plain = reference(tiny_checkpoint, DOC + QUESTION + answer, len(DOC), len(answer), layers, excess=False)
    assert torch.allclose(plain, ref_plain, atol=1e-6, rtol=1e-4), (plain - ref_plain).abs().max()
    last5 = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(DOC), QUESTION + answer, len(answer),
                             baseline_queries=5)  # the baseline: the prompt's last 5 queries before the answer's
    ref_last5 = reference(tiny_checkpoint, DOC + QUESTION + answer, len(DOC), len(answer), layers, baseline_queries=5)
    assert torch.allclose(last5, ref_last5, atol=1e-6, rtol=1e-4), (last5 - ref_last5).abs().max()
    assert not torch.allclose(last5, got)
    assert 0 < float(got.sum()) < float(plain.sum()) <= 1  # the excess is part of the answer's share


def test_without_prompt_queries_before_the_answers_the_score_is_the_answers_weight(llm):
    eng = llm.engine
    eng.prefix_cache.clear()
    generate(eng, "doc1", DOC, RequestOptions(prefill="dense", pin_prompt=True), 1)
    entry = DocumentPins(eng).find(DOC, "full")
    tail = QUESTION[:1] + [65, 66, 67]  # a one-token question: its position is the answer's first query
    got = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(DOC), tail, 3)
    plain = answer_attention(eng.model, eng.kv.pool, entry.blocks, len(DOC), tail, 3, excess=False)
    assert torch.equal(got, plain) and float(got.sum()) > 0


def test_positions_every_query_attends_cancel_and_the_needle_keeps_its_weight():
    P, needle, late = 100, slice(10, 13), slice(60, 100)  # an early 3-token needle, a long recent stretch
    answer, baseline = torch.zeros(2, P), torch.zeros(2, P)
    answer[0, late] = baseline[0, late] = 0.8 / 40  # head 0: recent text, whatever the query
    answer[1, needle] = 0.3 / 3  # head 1: the answer copies from the needle ...
    answer[1, late] = 0.7 / 40
    baseline[1, late] = 1.0 / 40  # ... where the prompt's queries read recent text
    mean = answer.mean(dim=0)  # the answer's weight alone: the stretch outscores the needle
    assert mean[late].sum() > 3 * mean[needle].sum()
    got = head_excess(answer, baseline)
    assert float(got[needle].sum()) == pytest.approx(0.3) and float(got[late].sum()) == 0


def test_a_needle_the_question_attends_in_other_heads_is_not_cancelled():
    P, needle = 50, slice(20, 23)
    answer, baseline = torch.zeros(2, P), torch.zeros(2, P)
    answer[0, needle] = 0.1  # head 0 copies the value
    baseline[1, needle] = 0.15  # head 1: the question repeats the needle's key and finds it
    assert float((answer - baseline).mean(dim=0)[needle].sum()) < 0  # a difference after averaging drops it
    assert float(head_excess(answer, baseline)[needle].sum()) == pytest.approx(0.3)


def test_other_layouts_are_refused_and_a_short_compact_document_is_cited_from_its_full_entry(llm):
    eng = llm.engine
    eng.prefix_cache.clear()
    pins = DocumentPins(eng)
    generate(eng, "fdoc", DOC, RequestOptions(prefill="dense", pin_prompt=True), 1)
    with pytest.raises(InvalidRequest, match="layout"):
        pins.answer_attention(DOC, "full", [1] + DOC + QUESTION, [65, 66])
    assert pins.answer_attention(tokens(50, 9), "full", tokens(60, 9), [65]) is None  # not pinned
    short = tokens(400, 4)  # below the op's 512-token minimum: prefilled densely, kept in full
    generate(eng, "sdoc", short, RequestOptions(kv_mode="compact", dense_tail_tokens=0, pin_prompt=True), 1)
    entry = pins.find(short, "compact")
    assert entry is not None and not entry.compact and pins.held_bytes(short, "compact") > 0
    assert len(pins.answer_attention(short, "compact", short + QUESTION, [65, 66])) == len(short)
