"""Citations over a compact document (lighthouse/engine/citations_context.py): its Lighthouse layers keep the op's
selected entries, each with the window of positions it pooled (`ctx_spans`, in the stored order); the citation
forward attends that context as the engine's compact follow-up does (the same logits), and an entry's weight is
spread over its window. The spans survive the disk tier; a store written without them refuses citations."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import lighthouse.engine.prefill as prefill_module
import lighthouse.engine.prefill_backend as backend_module
from lighthouse.engine.cache.disk_tier import DiskStore, export_entry, restore_entry
from lighthouse.engine.citations import citation_forward, head_excess
from lighthouse.engine.citations_context import DocumentContext, context_attention_weights, spread
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.documents import DocumentPins
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.ops import lighthouse_ref
from tests.engine.test_engine_compact import compact_model

N = 1100  # past the op's 512-token minimum, not a multiple of its length unit (the op pads: some entries are holes)
COMPACT_DOC = RequestOptions(kv_mode="compact", dense_tail_tokens=0, pin_prompt=True)


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return compact_model()  # test_engine_compact's: 4 layers, 0 and 3 dense, 1-2 Lighthouse, fp32


def engine(model) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, enable_prefix_caching=True,
                                               max_prefill_chunk_ms=None))


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


def run(eng, rid, prompt, opts, max_tokens=1) -> tuple[list[int], list[float]]:
    eng.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=0),
                    opts)
    toks, lps = [], []
    while eng.has_unfinished():
        for o in eng.step():
            if o.request_id == rid:
                toks += o.token_ids
                lps += [e.logprob for e in o.logprobs or []]
    return toks, lps


def windows(indices: torch.Tensor, n: int, levels: int, p: int) -> torch.Tensor:
    """(H, S) pyramid indices -> (H, S, 2) [start, length], decoded entry by entry (the pyramid is level 0's n_pad
    tokens, then level 1's n_pad / p windows, ...)."""
    n_pad = lighthouse_ref.padded_len(n, levels, p, 128)
    offsets = [sum(n_pad // p**j for j in range(level)) for level in range(levels)]
    out = torch.zeros(*indices.shape, 2, dtype=torch.int32)
    for h in range(indices.shape[0]):
        for e, x in enumerate(indices[h].tolist()):
            level = max(lv for lv in range(levels) if x >= offsets[lv])
            out[h, e] = torch.tensor([(x - offsets[level]) * p**level, p**level])
    return out


def test_a_compact_prefill_keeps_each_entrys_window_in_the_stored_order(model, monkeypatch):
    """The op's inputs are captured and the reference op run again on them: each layer's kept spans are its indices'
    windows, real ones (starting inside the prompt) first per head in the op's order, and entry e of head h in the
    pool holds the K the op selected for the window at spans[h, e]."""
    calls = {}
    op = backend_module.lighthouse_attention_with_context

    def capture(q, k, v, **kw):
        calls[len(calls)] = (q.clone(), k.clone(), v.clone(), kw)
        return op(q, k, v, **kw)

    monkeypatch.setattr(backend_module, "lighthouse_attention_with_context", capture)
    eng = engine(model)
    doc = ids(N, 1)
    run(eng, "doc", doc, COMPACT_DOC)
    (entry,) = eng.prefix_cache.entries
    lh, pool, r = model.config.lighthouse, eng.kv.pool, eng.kv.shape.group
    assert entry.compact and entry.ctx_spans is not None and len(calls) == 2  # Lighthouse layers 1 and 2
    assert entry.ctx_spans.shape == (4, 4, entry.selected, 2) and not entry.ctx_spans[[0, 3]].any()
    for layer, (q, k, v, kw) in zip((1, 2), calls.values()):
        _, k_sel, _, idx = lighthouse_ref.lighthouse_attention_with_context(q, k, v, **kw)
        spans = windows(idx[0], N, lh.levels, lh.pooling_factor)  # (H, S, 2)
        real = spans[..., 0] < N
        assert not real.all()  # the padding gives holes to skip
        order = torch.argsort((~real).to(torch.int8), dim=-1, stable=True)
        want = spans.gather(1, order[..., None].expand(-1, -1, 2))
        assert torch.equal(entry.ctx_spans[layer], want)
        assert torch.equal(entry.ctx_hole_start[layer].cpu(), real.sum(-1).to(torch.int32))
        assert ((want[..., 1] == 1) | (want[..., 1] == lh.pooling_factor)).all()
        k_pool, _ = pool.gather(pool.slots(entry.ctx_blocks[layer], 0, entry.selected * r))  # (S*r, H_kv, D)
        H_kv = k_pool.shape[1]
        k_pool = k_pool.view(entry.selected, r, H_kv, -1).permute(2, 1, 0, 3).reshape(H_kv * r, entry.selected, -1)
        want_k = k_sel[0].gather(1, order[..., None].expand(-1, -1, k_sel.shape[-1]))
        n_real = int(real.sum(-1).min())
        torch.testing.assert_close(k_pool[:, :n_real], want_k[:, :n_real])


@pytest.fixture(scope="module")
def asked(model):
    """A compact document pinned, then a question after it (greedy, 4 tokens), with the follow-up prefill's logits."""
    eng = engine(model)
    doc, question = ids(N, 2), ids(24, 3)
    run(eng, "doc", doc, COMPACT_DOC)
    seen = []
    task_run = prefill_module.PrefillTask.run

    def spy(self, *a, **kw):
        logits = task_run(self, *a, **kw)
        if logits is not None:
            seen.append(logits.clone())
        return logits

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prefill_module.PrefillTask, "run", spy)
        answer, logprobs = run(eng, "ask", doc + question, RequestOptions(kv_mode="compact"), max_tokens=4)
    entry = DocumentPins(eng).find(doc, "compact")
    return eng, doc, question, answer, logprobs, seen[-1], entry


def test_the_citation_forward_over_a_compact_document_gives_the_engines_follow_up(asked):
    """The question's last position: the engine's compact follow-up prefill's logits; the answer's last: the
    sparse decode step's log-probability of the token it chose."""
    eng, doc, question, answer, logprobs, prefill_logits, entry = asked
    assert entry is not None and entry.compact
    ctx = DocumentContext.of(entry)
    scores, logits = citation_forward(eng.model, eng.kv.pool, entry.blocks, len(doc), question, 1, context=ctx)
    torch.testing.assert_close(logits, prefill_logits, rtol=1e-5, atol=1e-5)
    scores, logits = citation_forward(eng.model, eng.kv.pool, entry.blocks, len(doc), question + answer[:3], 3,
                                      context=ctx, key_chunk=256)  # chunks of keys: the same result
    assert float(torch.log_softmax(logits, -1)[answer[3]]) == pytest.approx(logprobs[3], abs=1e-5)
    assert scores.shape == (len(doc),) and 0 < float(scores.sum()) <= 1


def test_a_compact_documents_citations_through_document_pins(asked):
    eng, doc, question, answer, _, _, entry = asked
    got = DocumentPins(eng).answer_attention(doc, "compact", doc + question, answer)
    want = citation_forward(eng.model, eng.kv.pool, entry.blocks, len(doc), question + answer, len(answer),
                            context=DocumentContext.of(entry))[0]
    assert torch.allclose(torch.tensor(got), want) and min(got) >= 0


def test_an_entry_that_takes_all_the_answers_attention_scores_only_its_window():
    """Context of S = 3 selected entries per head (the third a hole) and 2 full-resolution positions [10, 12); the
    answer's queries attend entry 1 of head 0 alone (window [4, 8)), the baseline has no queries."""
    H, D, split, P = 2, 8, 10, 12
    ctx = DocumentContext(tables=[[]], selected=3, split=split, hole_start=torch.tensor([[2, 2]], dtype=torch.int32),
                          spans=torch.tensor([[[[0, 4], [4, 4], [12, 4]], [[8, 4], [0, 1], [12, 4]]]],
                                             dtype=torch.int32))
    E, T = 3 + P - split, 3
    u = torch.zeros(D)
    u[0] = 1.0
    q = (40 * u).expand(H, T, D).clone()
    k = torch.zeros(H, E + T, D)
    k[0, 1] = 40 * u  # head 0, entry 1: logit 1600/sqrt(8) against 0 elsewhere
    k[:, E:] = -40 * u  # the tail's own keys: never attended
    k[1] = -40 * u
    k[1, 0] = 0  # head 1 attends entry 0 (window [8, 12), past the head's end at 10: [8, 10) only)
    v = torch.randn(H, E + T, D)
    valid = torch.tensor([[True, True, False, True, True]] * H)
    out, answer, baseline = context_attention_weights(q, k, v, valid, (0, 0, T), key_chunk=2)
    assert not baseline.any()
    assert torch.allclose(answer[0], torch.tensor([0.0, 1.0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(out[0], v[0, 1].expand(T, D), atol=1e-5)
    spread_answer = spread(answer, ctx, 0, P)
    assert torch.allclose(spread_answer[0], torch.tensor([0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0]), atol=1e-6)
    assert torch.allclose(spread_answer[1, 8:10], torch.tensor([0.5, 0.5]), atol=1e-6)
    scores = head_excess(spread_answer, spread(baseline, ctx, 0, P)) / H
    assert scores[:4].sum() == 0 and scores[10:].sum() == 0 and float(scores.sum()) == pytest.approx(1.0, abs=1e-5)


def test_the_disk_tier_keeps_the_spans_and_a_store_without_them_refuses_citations(model, tmp_path):
    eng = engine(model)
    doc = ids(N, 4)
    run(eng, "doc", doc, COMPACT_DOC)
    pins = DocumentPins(eng)
    store = DiskStore(tmp_path, "test")
    data = export_entry(eng.prefix_cache, pins.find(doc, "compact"))
    want = pins.answer_attention(doc, "compact", doc + [10, 65], [66, 67])
    store.save("new", data, {})
    store.save("old", replace(data, ctx_spans=None), {})  # as a store written before the spans were kept
    eng.prefix_cache.clear()
    loaded, _ = store.load("new")
    assert torch.equal(loaded.ctx_spans, data.ctx_spans)
    restore_entry(eng.prefix_cache, loaded)
    assert torch.equal(pins.find(doc, "compact").ctx_spans, data.ctx_spans)
    assert pins.answer_attention(doc, "compact", doc + [10, 65], [66, 67]) == pytest.approx(want, abs=1e-7)
    eng.prefix_cache.clear()
    old, _ = store.load("old")
    assert old.ctx_spans is None and old.ctx_hole_start is not None
    restore_entry(eng.prefix_cache, old)
    run(eng, "ask", doc + [10, 65], RequestOptions(kv_mode="compact"))  # it still serves questions
    with pytest.raises(InvalidRequest, match="upload the document again") as err:
        pins.answer_attention(doc, "compact", doc + [10, 65], [66, 67])
    assert err.value.code == "citations_unavailable" and err.value.param == "citations"
