"""Overlapped decode (engine/overlap.py): with the next decode step launched before this one's tokens are read,
every request gets the tokens, text, logprobs and finish reasons it gets without overlap (greedy and seeded
sampling; dense, sparse and compact rows; stops at different steps; arrivals and aborts mid-decode; a fault), the
steps launched ahead never write past a row's reservation, and rows that need the host between steps never overlap.
On the CPU the steps run synchronously, so these tests check what is computed, not the overlap in time (the GPU
test in test_decode_graphs_gpu.py runs it through CUDA graphs)."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams

LONG = 700  # >= the tiny preset's min_seq_len (512) + the dense tail: takes the sparse path


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def engines(ckpt, tiny_llm):
    return {on: tiny_llm(ckpt, overlap_decode=on).engine for on in (False, True)}


def prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


def run(engine, requests, *, arrivals=None, aborts=None):
    """requests: id -> (prompt, params, options); arrivals: step index -> more such requests, added before it;
    aborts: step index -> ids to abort before it. Returns id -> [(index, tokens, text, logprobs, finish)]."""
    arrivals, aborts = arrivals or {}, aborts or {}

    def add(reqs):
        for rid, (ids, params, options) in reqs.items():
            engine.add_request(rid, ids, params, options)

    add(requests)
    got: dict[str, dict[int, list]] = {}
    step = 0
    while engine.has_unfinished() or any(k >= step for k in arrivals):
        add(arrivals.get(step, {}))
        for rid in aborts.get(step, ()):
            engine.abort_request(rid)
        for o in engine.step():
            toks, text, lps, _ = got.setdefault(o.request_id, {}).get(o.index, ([], "", [], None))
            lp = [(t.token_id, round(t.logprob, 4)) for t in o.logprobs] if o.logprobs else []
            got[o.request_id][o.index] = (toks + o.token_ids, text + o.text, lps + lp, o.finish_reason)
        step += 1
    assert engine.kv.usage_ratio == 0.0 and engine.overlap.inflight is None
    return got


def both(engines, requests, **kw):
    chained = engines[True].overlap.chained
    off, on = run(engines[False], requests, **kw), run(engines[True], requests, **kw)
    return off, on, engines[True].overlap.chained - chained


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def test_greedy_batch_of_dense_sparse_and_compact_rows_is_unchanged(engines):
    def greedy(n):  # with logprobs: a K/V written at the wrong entry moves them even where the tokens stay
        return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=2)

    reqs = {"short": (prompt(30, 1), greedy(24), None),
            "dense": (prompt(LONG, 2), greedy(24), RequestOptions(prefill="dense")),
            "sparse": (prompt(LONG, 3), greedy(20), RequestOptions(prefill="sparse", decode="sparse")),
            "compact": (prompt(LONG, 4), greedy(17), RequestOptions(kv_mode="compact"))}
    off, on, chained = both(engines, reqs)
    assert on == off
    assert all(len(c[0][0]) == p.max_tokens for c, (_, p, _) in zip(off.values(), reqs.values()))
    assert chained >= 10  # the steady steps ran overlapped


def test_seeded_sampling_logprobs_and_n_are_unchanged(engines):
    sampled = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=40, seed=7, logprobs=3, n=3)
    reqs = {"s": (prompt(50, 5), sampled, None), "g": (prompt(40, 6), SamplingParams(max_tokens=16, temperature=0.0,
                                                                                    logprobs=0), None)}
    off, on, chained = both(engines, reqs)
    assert on == off and len(on["s"]) == 3 and chained > 0
    assert all(len(lps) == 16 for choice in on["s"].values() for _, _, lps, _ in [choice])


def test_rows_that_stop_at_different_steps_drop_the_token_made_for_them_meanwhile(engines):
    base = run(engines[False], {"x": (prompt(30, 8), GREEDY, None)})["x"][0][0]
    stops = {f"stop{k}": (prompt(30, 8), SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                                                        stop_token_ids=[base[k]]), None) for k in (2, 6, 11)}
    reqs = {**stops, "long": (prompt(45, 9), GREEDY, None),
            "max": (prompt(20, 10), SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True), None)}
    off, on, chained = both(engines, reqs)
    assert on == off and chained > 0
    for k in (2, 6, 11):
        toks, _, _, finish = on[f"stop{k}"][0]
        assert finish == "stop" and toks[-1] == base[k] and len(toks) <= k + 1
    assert on["max"][0][3] == "length" and len(on["max"][0][0]) == 5


def test_arrivals_and_aborts_mid_decode_drain_and_leave_the_others_unchanged(engines):
    reqs = {"a": (prompt(30, 11), GREEDY, None), "b": (prompt(35, 12), GREEDY, None)}
    later = {"c": (prompt(LONG, 13), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True), None)}
    off, on, chained = both(engines, reqs, arrivals={6: later}, aborts={12: ["b"]})
    assert on["a"] == off["a"] and on["c"] == off["c"] and chained > 0
    assert on["b"][0][3] == off["b"][0][3] == "abort"
    assert len(on["a"][0][0]) == 24 and len(on["c"][0][0]) == 10


def test_the_steps_launched_ahead_stay_inside_each_rows_reservation(engines, monkeypatch):
    engine = engines[True]
    runner, seen = engine.runner, []
    real = runner.decode_next

    def decode_next(B, tokens):
        out = real(B, tokens)  # (the batch it runs: the running sequences, as Scheduler.steady checked)
        seen.append((runner.inputs.pos[:B].tolist(), [s.request.capacity for s in engine.scheduler.running]))
        return out

    monkeypatch.setattr(runner, "decode_next", decode_next)
    reqs = {f"r{n}": (prompt(20 + n, 20 + n), SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), None)
            for n in (1, 2, 3, 7)}
    got = run(engine, reqs)
    assert [len(got[f"r{n}"][0][0]) for n in (1, 2, 3, 7)] == [1, 2, 3, 7]
    assert seen and all(p < cap for pos, caps in seen for p, cap in zip(pos, caps))


def test_a_fault_in_a_step_launched_ahead_drains_and_the_plain_step_isolates_it(engines, monkeypatch):
    reqs = {"a": (prompt(30, 14), GREEDY, None), "b": (prompt(33, 15), GREEDY, None)}
    clean = run(engines[False], reqs)
    engine = engines[True]
    real, calls = engine.runner.decode_next, []

    def decode_next(B, tokens):
        calls.append(B)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return real(B, tokens)

    monkeypatch.setattr(engine.runner, "decode_next", decode_next)
    assert run(engine, reqs) == clean and len(calls) > 3


@pytest.mark.parametrize("params,options", [
    (SamplingParams(max_tokens=12, temperature=0.0, repetition_penalty=1.3), None),
    (SamplingParams(max_tokens=12, temperature=0.0), RequestOptions(speculative=Speculation(num_tokens=3))),
])
def test_rows_that_need_the_host_between_steps_never_overlap(engines, params, options):
    plain = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)  # ends with x: never alone
    off, on, chained = both(engines, {"x": (prompt(40, 16), params, options), "y": (prompt(30, 17), plain, None)})
    assert on == off and chained == 0
