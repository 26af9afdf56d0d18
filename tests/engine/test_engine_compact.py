"""Compact sessions (kv_mode "compact"): the Lighthouse layers keep only the prompt's selected context and later
positions, no full cache; the tokens are those of a full session with sparse decode, and admission reserves what
each session holds, so the budget is never over-committed."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.presets import model_preset

N = 1100  # past the op's 512-token minimum and not a multiple of its length unit (the op pads)
GREEDY = dict(temperature=0.0, ignore_eos=True, logprobs=0)


def compact_model() -> LlamaForCausalLM:
    """tiny (GQA 4/2), 4 layers: 0 and 3 dense, 1-2 Lighthouse (L2 p4 k128 from 512 tokens); fp32."""
    cfg = model_preset("tiny")
    cfg.num_hidden_layers = 4
    cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0, 3], min_seq_len=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return compact_model()


def engine(model, **config) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(**{"kv_cache_bytes": 16 << 20, "block_size": 16,
                                                  "enable_prefix_caching": False, "max_prefill_chunk_ms": None, **config}))


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


def generate(eng: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams, RequestOptions]]) -> dict:
    """Run requests to the end: {request id: (tokens, logprobs, finish reasons)}."""
    for rid, (prompt, params, opts) in requests.items():
        eng.add_request(rid, prompt, params, opts)
    out: dict[str, tuple[list, list, list]] = {rid: ([], [], []) for rid in requests}
    while eng.has_unfinished():
        for o in eng.step():
            toks, lps, reasons = out[o.request_id]
            toks.extend(o.token_ids)
            lps.extend(e.logprob for e in o.logprobs or [])
            if o.finished:
                reasons.append(o.finish_reason)
    return out


@pytest.mark.parametrize("tail", [0, 64])
def test_compact_gives_the_tokens_of_a_full_session_with_sparse_decode(model, tail):
    """The Lighthouse layers' context is the same entries either way; the dense tail attends to the layer's full
    K/V while its prefill runs (the scratch), so the results agree with and without a tail."""
    prompt = ids(N, 1)
    params = SamplingParams(max_tokens=12, **GREEDY)
    full = generate(engine(model), {"r": (prompt, params, RequestOptions("sparse", "sparse", tail))})["r"]
    eng = engine(model)
    compact = generate(eng, {"r": (prompt, params, RequestOptions("sparse", None, tail, kv_mode="compact"))})["r"]
    dense = generate(engine(model), {"r": (prompt, params, RequestOptions("sparse", "dense", tail))})["r"]
    assert compact[0] == full[0]
    torch.testing.assert_close(torch.tensor(compact[1]), torch.tensor(full[1]), rtol=1e-5, atol=1e-5)
    assert dense[1][1:] != full[1][1:]  # the comparison can fail: dense decode attends to other entries
    assert eng.kv.num_free == eng.kv.allocator.usable  # everything given back


def test_a_compact_session_holds_only_the_full_attention_layers_cache_and_the_context(model):
    eng = engine(model)
    req = eng.make_request("c", ids(N, 2), SamplingParams(max_tokens=8, **GREEDY), RequestOptions(kv_mode="compact"))
    full = eng.make_request("f", ids(N, 2), SamplingParams(max_tokens=8, **GREEDY), RequestOptions(decode="sparse"))
    plan, res, shape = req.plan, req.reservation, eng.kv.shape
    assert plan.compact and plan.sparse_decode and plan.lighthouse_layers == (1, 2)
    assert res.full_layers == (0, 3) and res.ctx_layers == (1, 2) and res.scratch_positions == N
    capacity, entries = N + 8, plan.selected + N + 8 - plan.split
    assert res.held_blocks(shape) == 2 * shape.blocks_for(capacity) + 2 * shape.ctx_blocks_for(entries)
    assert full.reservation.held_blocks(shape) == 4 * shape.blocks_for(capacity) + 2 * shape.ctx_blocks_for(entries)
    free = eng.kv.num_free
    eng.enqueue(req)
    eng.step()  # the whole prefill (nothing else decodes), then the scratch goes back
    kv = req.seqs[0].kv
    assert kv.blocks[1] == kv.blocks[2] == [] and kv.scratch == []
    assert all(len(kv.blocks[i]) == shape.blocks_for(capacity) for i in (0, 3))
    assert kv.ctx_blocks[0] == kv.ctx_blocks[3] == [] and kv.ctx_len == plan.selected + N - plan.split
    assert free - eng.kv.num_free == res.held_blocks(shape)
    assert eng.kv.usage_ratio == pytest.approx(res.held_blocks(shape) / eng.kv.allocator.usable)
    while eng.has_unfinished():
        eng.step()
    assert eng.kv.num_free == free


def test_n2_compact_choices_fork_the_context(model):
    eng = engine(model)
    params = SamplingParams(max_tokens=6, n=2, temperature=1.0, seed=3, logprobs=0, ignore_eos=True)
    one = generate(eng, {"a": (ids(N, 3), params, RequestOptions(kv_mode="compact"))})["a"]
    params = SamplingParams(max_tokens=6, n=2, temperature=1.0, seed=3, logprobs=0, ignore_eos=True)
    ref = generate(engine(model), {"a": (ids(N, 3), params, RequestOptions(decode="sparse"))})["a"]
    assert one[0] == ref[0] and one[2] == ["length", "length"]
    assert eng.kv.num_free == eng.kv.allocator.usable


def test_admission_fills_the_budget_with_compact_and_full_sessions_without_over_committing(model):
    """A budget that holds two compact sessions and one full one at a time, never all requests: every request
    finishes (the rest wait their turn), the blocks in use never exceed the budget, and while the sessions run
    the usage ratio is the sum of their reservations."""
    probe = engine(model)
    params = SamplingParams(max_tokens=4, **GREEDY)
    c = probe.make_request("c", ids(N, 0), params, RequestOptions(kv_mode="compact")).reservation
    f = probe.make_request("f", ids(N, 0), SamplingParams(max_tokens=4, **GREEDY), RequestOptions()).reservation
    shape = probe.kv.shape
    blocks = 2 * c.held_blocks(shape) + f.held_blocks(shape) + c.scratch_positions // shape.block_size + 2
    eng = engine(model, kv_cache_bytes=(blocks + 1) * shape.bytes_per_block)
    kinds = ["compact", "full", "compact", "compact", "full", "compact"]
    reqs = {f"{k}{i}": (ids(N, 10 + i), SamplingParams(max_tokens=4, **GREEDY),
                        RequestOptions(kv_mode=k) if k == "compact" else RequestOptions())
            for i, k in enumerate(kinds)}
    for rid, (prompt, p, opts) in reqs.items():
        eng.add_request(rid, prompt, p, opts)
    peak_running, matched = 0, False
    while eng.has_unfinished():
        eng.step()
        a = eng.kv.allocator
        assert 0 <= a.num_free <= a.usable
        running = [s for s in eng.scheduler.running]
        held = sum(s.request.reservation.held_blocks(shape) for s in running if s.kv is not None and not s.kv.scratch)
        if running and all(not s.kv.scratch for s in running if s.kv is not None) and eng.scheduler.prefilling is None:
            assert eng.kv.usage_ratio == pytest.approx(held / a.usable)
            matched = True
        peak_running = max(peak_running, len(running))
    assert matched and peak_running >= 2
    assert eng.kv.num_free == eng.kv.allocator.usable


def test_a_request_that_could_never_fit_is_refused_up_front_and_compact_is_suggested(model):
    probe = engine(model)
    f = probe.make_request("f", ids(N, 0), SamplingParams(max_tokens=4), RequestOptions(decode="sparse")).reservation
    c = probe.make_request("c", ids(N, 0), SamplingParams(max_tokens=4), RequestOptions(kv_mode="compact")).reservation
    shape = probe.kv.shape
    eng = engine(model, kv_cache_bytes=(c.blocks(shape) + 1) * shape.bytes_per_block)
    assert c.blocks(shape) < f.blocks(shape)
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("f", ids(N, 0), SamplingParams(max_tokens=4), RequestOptions(decode="sparse"))
    assert info.value.code == "kv_cache_exceeded" and "kv_mode 'compact'" in info.value.message
    out = generate(eng, {"c": (ids(N, 0), SamplingParams(max_tokens=4, **GREEDY), RequestOptions(kv_mode="compact"))})
    assert out["c"][2] == ["length"] and len(out["c"][0]) == 4


def test_kv_mode_options_resolve_and_conflicts_are_clear_errors(model):
    with pytest.raises(InvalidRequest) as info:
        RequestOptions(decode="dense", kv_mode="compact")
    assert info.value.param == "kv_mode" and "sparse" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        RequestOptions(kv_mode="tiny")
    assert info.value.param == "kv_mode"
    with pytest.raises(ValueError):
        EngineConfig(kv_mode="tiny")
    assert RequestOptions(kv_mode="compact").resolved("sparse", "dense", 64).decode == "sparse"
    assert RequestOptions().resolved("sparse", "dense", 64, "compact").kv_mode == "compact"
    assert RequestOptions(decode="dense").resolved("sparse", "sparse", 64, "compact").kv_mode == "full"
    eng = engine(model, kv_mode="compact")
    assert eng.make_request("a", ids(N, 0), SamplingParams(max_tokens=2)).plan.compact
    short = eng.make_request("b", ids(100, 0), SamplingParams(max_tokens=2))  # too short for the op: a full session
    assert not short.plan.compact and short.reservation.full_layers == (0, 1, 2, 3)


def test_a_compact_follow_up_reuses_the_documents_context_as_sparse_decode_reads_it(model):
    """Document + question 1, then document + question 2, both compact: the second reuses the document (the
    first request's head) and its new tokens attend to the kept context exactly as sparse decode tokens would:
    the reference prefills the document alone (dense tail 0, the same head) and feeds question 2 through decode
    steps."""
    doc, q1, q2 = ids(1036, 5), ids(64, 6), ids(40, 7)
    assert q1[0] != q2[0]
    eng = engine(model, enable_prefix_caching=True)
    compact = RequestOptions(kv_mode="compact", dense_tail_tokens=64)
    generate(eng, {"first": (doc + q1, SamplingParams(max_tokens=1, **GREEDY), compact)})
    (entry,) = eng.prefix_cache.entries
    assert entry.compact and entry.split == 1036 and entry.blocks[1] == [] and entry.ctx_blocks[1]
    eng.add_request("second", doc + q2, SamplingParams(max_tokens=4, **GREEDY), compact)
    toks, lps, cached = [], [], None
    while eng.has_unfinished():
        for o in eng.step():
            toks += o.token_ids
            lps += [e.logprob for e in o.logprobs or []]
            cached = o.prefill.cached_tokens if o.prefill is not None else cached
    assert cached == 1036

    ref = engine(model)
    req = ref.make_request("ref", doc, SamplingParams(max_tokens=48, **GREEDY), RequestOptions("sparse", "sparse", 0))
    ref.enqueue(req)
    ref.step()  # the document's prefill: the same head, split and selection as the entry's
    kv = req.seqs[0].kv
    assert kv.ctx_len == entry.selected
    want_toks, want_lps = [], []
    feed = list(q2)
    for _ in range(len(q2) + 3):
        logits = ref.runner.decode([kv], [feed.pop(0)])[0]
        kv.commit_token()  # the runner writes the position; committing it is the scheduler's (here: the test's)
        if not feed:
            lp = torch.log_softmax(logits, -1)
            want_toks.append(int(lp.argmax()))
            want_lps.append(float(lp.max()))
            feed.append(want_toks[-1])
    assert toks == want_toks
    torch.testing.assert_close(torch.tensor(lps), torch.tensor(want_lps), rtol=1e-5, atol=1e-5)
    # a full-session request never reuses a compact entry, nor a compact request a full one
    assert eng.prefix_cache.match(torch.tensor(doc + q2), 1036) is None
    eng.prefix_cache.clear()
    assert eng.kv.num_free == eng.kv.allocator.usable


def test_without_max_tokens_a_request_gets_as_many_as_its_layout_fits(model):
    eng = engine(model, kv_cache_bytes=3 << 20, kv_mode="compact")  # max_model_len: what the dense layers hold
    for opts in (RequestOptions(kv_mode="compact"), RequestOptions(decode="sparse")):
        req = eng.make_request("a", ids(N, 0), SamplingParams(max_tokens=None), opts)
        m = req.params.max_tokens
        assert 1 <= m < eng.max_model_len - N
        assert eng.kv.fits_ever(eng.admission.blocks_needed(req, None))
        with pytest.raises(InvalidRequest) as info:  # 64 more tokens (4 more blocks a layer) would not fit
            eng.make_request("b", ids(N, 0), SamplingParams(max_tokens=m + 64), opts)
        assert info.value.code == "kv_cache_exceeded"
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("c", ids(N, 0), SamplingParams(max_tokens=eng.max_model_len - N), RequestOptions(decode="sparse"))
    assert info.value.code == "kv_cache_exceeded"
