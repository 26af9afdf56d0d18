"""In-flight sharing through the engine (issue #30 item 1): two concurrent questions on a new document cost one
prefill of the document. The second question, arriving while the first one's prefill runs (in pieces), waits for it
and then prefills its own tokens only; if the first is aborted mid-prefill, the second prefills for itself. Steps are
counted, never timed (a piece is one unit of work: max_prefill_chunk_ms ~0)."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.options import RequestOptions
from lighthouse.engine.request import RequestOutput
from lighthouse.engine.sampling import SamplingParams

DOC, Q = 600, 40  # a document past the tiny preset's sparse minimum (512), asked two questions


def tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


DOCUMENT = tokens(DOC, 11)
Q1, Q2 = tokens(Q, 12), tokens(Q, 13)
Q2[0] = 32 + (Q1[0] - 32 + 1) % 95  # the questions differ from their first token on
MODES = {"dense": RequestOptions(prefill="dense"), "sparse": RequestOptions(prefill="sparse", dense_tail_tokens=Q)}


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, tiny_llm):
    return tiny_llm(tiny_checkpoint, max_prefill_chunk_ms=1e-6, prefill_chunk_tokens=128)  # every unit a piece


@pytest.fixture(autouse=True)
def empty_cache(llm):
    llm.engine.prefix_cache.clear()
    yield
    assert llm.engine.kv.usage_ratio == 0 and llm.engine.prefix_cache.in_flight == []


def params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def drive(eng, first: list[int], second: list[int], opts: RequestOptions, *, abort_first_after: int | None = None,
          second_options: RequestOptions | None = None):
    """"first" is added, after its first prefill piece "second"; steps until both finish. Returns per request its
    tokens, finish reason and PrefillInfo, and whether "first" was still prefilling when "second" came."""
    got = {r: {"tokens": [], "reason": None, "prefill": None} for r in ("first", "second")}

    def take(outs: list[RequestOutput]) -> None:
        for o in outs:
            g = got[o.request_id]
            g["tokens"] += o.token_ids
            g["prefill"] = g["prefill"] or o.prefill
            g["reason"] = o.finish_reason if o.finished else g["reason"]

    eng.add_request("first", first, params(), opts)
    take(eng.step())
    in_flight = eng.scheduler.prefilling is not None and eng.scheduler.prefilling.request.request_id == "first"
    eng.add_request("second", second, params(), second_options or opts)
    steps = 0
    while eng.has_unfinished():
        take(eng.step())
        steps += 1
        if steps == abort_first_after:
            eng.abort_request("first")
    return got, in_flight


def alone(eng, prompt: list[int], opts: RequestOptions) -> list[int]:
    eng.prefix_cache.clear()
    out = []
    eng.add_request("alone", prompt, params(), RequestOptions(opts.prefill, opts.decode, opts.dense_tail_tokens,
                                                              cache_prompt=False))
    while eng.has_unfinished():
        out += [t for o in eng.step() for t in o.token_ids]
    return out


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_two_concurrent_questions_on_a_new_document_cost_one_prefill(llm, mode):
    eng, opts = llm.engine, MODES[mode]
    got, in_flight = drive(eng, DOCUMENT + Q1, DOCUMENT + Q2, opts)
    assert in_flight  # the second question came while the first one's prefill was in progress
    first, second = got["first"]["prefill"], got["second"]["prefill"]
    assert first.cached_tokens == 0 and second.cached_tokens == DOC
    prefilled = [p.sparse_tokens + p.dense_tokens for p in (first, second)]
    assert prefilled == [DOC + Q, Q]  # the document once, each question once
    assert got["first"]["reason"] == got["second"]["reason"] == "length"
    # exact: the shared document changes no token of either answer
    assert got["second"]["tokens"] == alone(eng, DOCUMENT + Q2, opts)
    assert got["first"]["tokens"] == alone(eng, DOCUMENT + Q1, opts)


def test_the_entry_is_usable_when_the_prefill_ends_before_the_request_finishes(llm):
    eng = llm.engine
    eng.add_request("first", DOCUMENT + Q1, SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True),
                    MODES["dense"])
    while eng.scheduler.prefilling is not None or not eng.scheduler.running:
        eng.step()
    assert len(eng.prefix_cache.entries) == 1  # kept already: "first" has 49 tokens to go
    eng.add_request("second", DOCUMENT + Q2, params(), MODES["dense"])
    infos = {}
    while eng.has_unfinished():
        for o in eng.step():
            infos.setdefault(o.request_id, o.prefill)
    assert infos["second"].cached_tokens == DOC


def test_when_the_first_prefill_is_aborted_the_waiting_question_prefills_for_itself(llm):
    eng, opts = llm.engine, MODES["dense"]
    got, in_flight = drive(eng, DOCUMENT + Q1, DOCUMENT + Q2, opts, abort_first_after=2)
    assert in_flight and got["first"]["reason"] == "abort" and got["first"]["tokens"] == []
    second = got["second"]["prefill"]
    assert second.cached_tokens == 0 and second.dense_tokens == DOC + Q and got["second"]["reason"] == "length"
    assert got["second"]["tokens"] == alone(eng, DOCUMENT + Q2, opts)


def test_a_question_of_another_cache_salt_does_not_wait_for_the_prefill_nor_reuse_it(llm):
    """Salts (the server's per API key): the second question's prompt matches the first's prefill in progress, but
    under another salt it neither waits for it nor reuses its entry: both prefill the document."""
    eng = llm.engine
    got, in_flight = drive(eng, DOCUMENT + Q1, DOCUMENT + Q2, RequestOptions(prefill="dense", cache_salt="a"),
                           second_options=RequestOptions(prefill="dense", cache_salt="b"))
    assert in_flight
    first, second = got["first"]["prefill"], got["second"]["prefill"]
    assert first.cached_tokens == second.cached_tokens == 0
    assert [p.sparse_tokens + p.dense_tokens for p in (first, second)] == [DOC + Q, DOC + Q]
    assert {e.salt for e in eng.prefix_cache.entries} == {"a", "b"}
