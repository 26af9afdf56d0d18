"""Prompt-lookup speculation in the engine: greedy outputs are the same token for token with and without it (dense
and sparse decode, a batch whose sequences accept different numbers of drafts, stops, max_tokens, logprobs, the
bundled checkpoint on an extractive prompt), the KV cache after rejected drafts equals a run without
speculation, sampled outputs keep the model's distribution end to end, and the server default applies."""

from __future__ import annotations

import math

import pytest
import torch

from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams

LONG = 700  # a sparse prefill (the tiny preset's min_seq_len 512 + the dense tail)
SPEC = RequestOptions(speculative=Speculation("prompt_lookup", 4))


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, tiny_llm):
    return tiny_llm(tiny_checkpoint)


def rand(n: int, seed: int) -> list[int]:
    return torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prompts(long: bool = False) -> list[list[int]]:
    """Different acceptance: a passage repeated, a short pattern repeated, random text, text then a repeated span."""
    n = 6 if long else 1
    return [rand(50 * n, 1) * 3, rand(7, 2) * (20 * n), rand(120 * n, 3), rand(100 * n, 4) + rand(10 * n, 5) * 2]


def run(llm, ps, params, options=None):
    sp = llm.engine.speculator
    before = (sp.proposed, sp.accepted)
    out = llm.generate(ps, params, options)
    return out, (sp.proposed - before[0], sp.accepted - before[1])


@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_greedy_outputs_are_identical_with_and_without_speculation(llm, decode):
    long = decode == "sparse"
    ps = prompts(long)
    params = SamplingParams(temperature=0.0, max_tokens=48)
    base, _ = run(llm, ps, params, RequestOptions(decode=decode))
    spec, (proposed, accepted) = run(llm, ps, params, RequestOptions(decode=decode, speculative=SPEC.speculative))
    for a, b in zip(base, spec):
        assert b.choices[0].token_ids == a.choices[0].token_ids
        assert b.choices[0].text == a.choices[0].text
    assert b.prefill.decode == decode
    assert accepted > 0 and proposed > accepted, "drafts accepted and some rejected (rolled back)"


def test_stops_lengths_and_logprobs_agree_across_several_tokens_per_step(llm):
    ps = prompts()
    base, _ = run(llm, ps, SamplingParams(temperature=0.0, max_tokens=30, logprobs=2))
    texts = [g.choices[0].text for g in base]
    stop = texts[0][11:14]  # a stop string that ends the first sequence in the middle of its output
    params = SamplingParams(temperature=0.0, max_tokens=29, logprobs=2, stop=[stop])
    base, _ = run(llm, ps, params)
    spec, (_, accepted) = run(llm, ps, params, SPEC)
    assert accepted > 0
    assert base[0].choices[0].finish_reason == "stop"
    for a, b in zip(base, spec):
        ca, cb = a.choices[0], b.choices[0]
        assert (cb.token_ids, cb.text, cb.finish_reason) == (ca.token_ids, ca.text, ca.finish_reason)
        assert len(cb.logprobs) == len(cb.token_ids)
        for la, lb in zip(ca.logprobs, cb.logprobs):
            assert lb.token_id == la.token_id and lb.logprob == pytest.approx(la.logprob, abs=1e-4)
            assert [t for t, _ in lb.top] == [t for t, _ in la.top]
    assert all(len(g.choices[0].token_ids) <= 29 for g in spec)


def _cache_rows(engine, seq):
    """What each layer's decode reads of a running sequence: its full positions [0, length), or in a layer that
    decodes over a context, its context entries [0, ctx_len) (that layer's full table stops at the prompt)."""
    kv, pool, r = seq.kv, engine.kv.pool, engine.kv.shape.group
    rows = []
    for i in range(len(kv.blocks)):
        table, per_head = kv.decode_table(i)
        rows.append([t.clone() for t in pool.read(table, kv.ctx_len * r if per_head else kv.length)])
    return kv.length, kv.ctx_len, rows


def _step_until(engine, rid, params, options, ids, until):
    """Run one request until it has at least `until` output tokens (one per step without speculation); its state."""
    engine.add_request(rid, ids, params, options)
    seq = engine._requests[rid].seqs[0]
    while len(seq.output_ids) < until:
        engine.step()
    return seq


@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_kv_cache_after_rejected_drafts_equals_a_run_without_speculation(llm, decode):
    engine = llm.engine
    ids = prompts(decode == "sparse")[3]
    params = SamplingParams(temperature=0.0, max_tokens=60)
    sp = engine.speculator
    before = (sp.proposed, sp.accepted)
    spec = _step_until(engine, f"kv-spec-{decode}", params, RequestOptions(decode=decode, speculative=SPEC.speculative),
                       ids, 30)
    assert sp.proposed - before[0] > sp.accepted - before[1] > 0, "some drafts were rejected"
    out, state = list(spec.output_ids), _cache_rows(engine, spec)
    _drain(engine, f"kv-spec-{decode}")
    plain = _step_until(engine, f"kv-plain-{decode}", params, RequestOptions(decode=decode), ids, len(out))
    assert plain.output_ids == out
    length, ctx_len, rows = _cache_rows(engine, plain)
    _drain(engine, f"kv-plain-{decode}")
    assert (length, ctx_len) == state[:2] and length == len(ids) + len(out) - 1
    assert len(rows) == len(state[2]) and (ctx_len > 0) == (decode == "sparse")
    for (k1, v1), (k2, v2) in zip(state[2], rows):
        torch.testing.assert_close(k1, k2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v1, v2, atol=1e-5, rtol=1e-5)


def _drain(engine, rid):
    engine.abort_request(rid)
    while engine.has_unfinished():
        engine.step()


def test_the_server_default_speculates_and_a_request_can_turn_it_off(tiny_checkpoint, tiny_llm):
    llm = tiny_llm(tiny_checkpoint, speculative_num_tokens=3)
    ps, params = prompts()[:2], SamplingParams(temperature=0.0, max_tokens=24)
    default, (proposed, _) = run(llm, ps, params)
    assert proposed > 0
    off, (proposed, _) = run(llm, ps, params, RequestOptions(speculative=Speculation("prompt_lookup", 0)))
    assert proposed == 0
    assert [g.choices[0].token_ids for g in off] == [g.choices[0].token_ids for g in default]


def test_sampled_tokens_keep_the_models_distribution_end_to_end(llm, monkeypatch):
    """Drafts forced to a likely-but-not-certain token: the law of the 2nd and 3rd tokens given the 1st is the
    model's (temperature 1, top-k 2), computed exactly from the model's own forward."""
    from lighthouse.engine.speculative import step

    engine, model = llm.engine, llm.engine.model
    ids = rand(30, 9)
    params = SamplingParams(temperature=1.0, top_k=2, max_tokens=3, n=16, seed=0)

    @torch.no_grad()
    def dist(ctx):
        logits = model(torch.tensor([ids + list(ctx)]), logits_to_keep=1).logits[0, -1].float()
        top = torch.topk(logits, 2)
        return {int(t): float(p) for t, p in zip(top.indices, top.values.softmax(-1))}

    first = dist([])
    drafts = {t0: max(dist([t0]), key=dist([t0]).get) for t0 in first}  # the likelier 2nd token as the draft
    monkeypatch.setattr(step.TokenHistory, "draft", lambda hist, k: [drafts[int(hist.buf[len(ids)])]])
    N = 960
    sp = engine.speculator
    before = sp.proposed
    # seeded (a seed per request of 16 choices, each choice its own stream): the same draws on every run, so the
    # test cannot flake (unseeded, one run in a thousand fails by chance at p = 0.001)
    outs = [g for i in range(N // 16)
            for g in llm.generate([ids], SamplingParams(**{**vars(params), "seed": 1000 + i}), SPEC)]
    assert sp.proposed - before >= N * 0.5, "most sequences verified a draft"
    counts: dict[tuple[int, ...], int] = {}
    for g in outs:
        for c in g.choices:
            counts[tuple(c.token_ids)] = counts.get(tuple(c.token_ids), 0) + 1
    stat, df = 0.0, -1
    for t0, p0 in first.items():
        for t1, p1 in dist([t0]).items():
            for t2, p2 in dist([t0, t1]).items():
                e = N * p0 * p1 * p2
                stat += (counts.get((t0, t1, t2), 0) - e) ** 2 / e
                df += 1
    a = 2 / (9 * df)
    critical = df * (1 - a + 3.09 * math.sqrt(a)) ** 3  # p = 0.001
    assert sum(counts.values()) == N and stat < critical, f"chi2 {stat:.1f} > {critical:.1f}: {counts}"


def test_bundled_checkpoint_greedy_is_identical_on_an_extractive_prompt():
    from lighthouse.checkpoint import default_checkpoint_dir
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import LLM

    llm = LLM(str(default_checkpoint_dir()), EngineConfig(kv_cache_bytes=64 << 20, max_prefill_chunk_ms=None),
              device="cpu", dtype="float32")
    filler = " ".join(["The grass is green. The sky is blue. The sun is yellow. Here we go."] * 6)
    facts = "The pass key is 28417. Remember it. The access code of the amber harbour is KT-4821."
    text = f"{filler} {facts} {filler}\nWhat is the pass key? The pass key is"
    params = SamplingParams(temperature=0.0, max_tokens=40)
    base, _ = run(llm, [text], params)
    spec, (proposed, accepted) = run(llm, [text], params, SPEC)
    assert spec[0].choices[0].token_ids == base[0].choices[0].token_ids
    assert accepted > 0 and proposed > 0


@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_a_verify_step_padded_as_its_cuda_graph_pads_it_gives_the_same_outputs(llm, decode, monkeypatch):
    """On CUDA the verify step replays a graph of a bucket's rows and queries: rows with no tokens and each row's tokens
    right-aligned in more queries. Forced here in eager mode (3 extra rows, 4 extra queries): greedy tokens and their
    logprobs equal the unpadded step's."""
    from lighthouse.engine.model_runner import ModelRunner

    ps = prompts(decode == "sparse")
    params = SamplingParams(temperature=0.0, max_tokens=40, logprobs=1)
    options = RequestOptions(decode=decode, speculative=SPEC.speculative)
    plain, _ = run(llm, ps, params, options)
    monkeypatch.setattr(ModelRunner, "_verify_shape", lambda self, B, Q: (B + 3, Q + 4, False))
    padded, (proposed, _) = run(llm, ps, params, options)
    assert proposed > 0
    for a, b in zip(plain, padded):
        assert b.choices[0].token_ids == a.choices[0].token_ids
        la = [t.logprob for t in a.choices[0].logprobs]
        lb = [t.logprob for t in b.choices[0].logprobs]
        assert lb == pytest.approx(la, abs=1e-4)


def test_a_drafting_requests_prompt_index_is_built_when_it_arrives_not_at_its_first_draft(llm, monkeypatch):
    """Speculator.admit: the prompt's 2-gram index is submitted to a worker thread as the request is added (it then
    overlaps the prefill); a request that does not draft gets none; the drafts are the rule's either way."""
    from lighthouse.engine.speculative import proposer

    built = []
    real = proposer._prompt_index
    monkeypatch.setattr(proposer, "_prompt_index", lambda p: built.append(len(p)) or real(p))
    eng = llm.engine
    ps = prompts()
    eng.add_request("plain-0", ps[0], SamplingParams(max_tokens=4, temperature=0.0))
    assert built == [] and eng.scheduler.waiting[-1].seqs[0].history is None
    eng.add_request("spec-0", ps[0], SamplingParams(max_tokens=4, temperature=0.0), SPEC)
    seq = eng.scheduler.waiting[-1].seqs[0]
    assert seq.history is not None and seq.history._building is not None  # submitted before any step ran
    seq.history._building.result()
    assert built == [len(ps[0])]
    while eng.has_unfinished():
        eng.step()
    assert built == [len(ps[0])]  # not built again at the first draft
    assert seq.history._building is None and seq.history._sorted is not None


def test_the_sequences_of_one_request_share_one_prompt_index(llm, monkeypatch):
    """n > 1: every sequence of a drafting request drafts from its own history, but the prompt's index is sorted once
    (the sequences share the prompt and the index is only read); sampled outputs still come out."""
    from lighthouse.engine.speculative import proposer

    built = []
    real = proposer._prompt_index
    monkeypatch.setattr(proposer, "_prompt_index", lambda p: built.append(len(p)) or real(p))
    eng = llm.engine
    ps = prompts()
    eng.add_request("spec-n3", ps[0], SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=1), SPEC)
    seqs = eng.scheduler.waiting[-1].seqs
    assert len(seqs) == 3 and len({id(s.history) for s in seqs}) == 3
    assert len({id(s.history._building) for s in seqs}) == 1 and seqs[0].history._building is not None
    while eng.has_unfinished():
        eng.step()
    assert built == [len(ps[0])]
    assert all(s.history._sorted is not None and len(s.output_ids) == 6 for s in seqs)
