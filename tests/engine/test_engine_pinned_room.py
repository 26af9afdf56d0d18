"""A request that can never fit beside the pinned documents is refused at once (an error output with code
kv_cache_exceeded naming the pinned documents and what fits), never left waiting; one that fits beside them, or
continues a pinned document, still runs; and once the document is unpinned the same request runs. Steps are counted
(a bound, so a request that would wait forever fails the test instead of hanging it)."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.errors import KV_CACHE_EXCEEDED
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams

BLOCK_BYTES = 2 * 2 * 16 * 128 * 4  # one layer's block of the tiny preset in fp32: K and V, 2 heads x 16, 128 slots
DOC = 1200  # pinned: 10 blocks in each of the 2 layers (20 of the 32)
MAX_STEPS = 200


def tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def llm(tiny_checkpoint, tiny_llm):
    return tiny_llm(tiny_checkpoint, kv_cache_bytes=33 * BLOCK_BYTES)  # 32 usable (one block is kept back)


def run(eng, rid: str, prompt: list[int], opts: RequestOptions | None = None, max_tokens: int = 4) -> dict:
    """Add one request and step until it finishes (at most MAX_STEPS): its last output and the steps taken."""
    eng.add_request(rid, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True), opts)
    last, steps = None, 0
    while eng.has_unfinished():
        assert steps < MAX_STEPS, f"request {rid} still unfinished after {steps} steps (waiting forever?)"
        for o in eng.step():
            last = o if o.request_id == rid and o.finished else last
        steps += 1
    return {"out": last, "steps": steps}


@pytest.mark.timeout(120)
def test_a_request_that_never_fits_beside_the_pins_is_refused_at_once(llm):
    eng = llm.engine
    eng.prefix_cache.clear()
    document = tokens(DOC, 1)
    assert run(eng, "doc", document, RequestOptions(dense_tail_tokens=0, pin_prompt=True), 1)["out"].error is None
    _, held = eng.prefix_cache.pinned()
    usable = eng.kv.allocator.usable
    assert held == 20 and usable == 32

    big = tokens(900, 2)  # 2 x 8 blocks: under the whole cache (intake accepts it), over what the pins leave
    got = run(eng, "big", big)
    out = got["out"]
    assert out.finish_reason == "error" and out.error_code == KV_CACHE_EXCEEDED, out
    assert got["steps"] <= 2  # refused at the first step, not after waiting
    assert "1,200" in out.error and "20 of the server's 32 blocks" in out.error and "leaving 12" in out.error
    assert "Delete pinned documents" in out.error

    # beside the pins: a question on the document (its blocks shared) and a small prompt still run
    question = run(eng, "question", document + tokens(40, 3), RequestOptions(dense_tail_tokens=40))["out"]
    assert question.error is None and question.finish_reason == "length"
    assert run(eng, "small", tokens(300, 4))["out"].error is None

    # the document unpinned: the refused request fits now
    e = next(e for e in eng.prefix_cache.entries if e.pins)
    e.pins = 0
    eng.prefix_cache.discard(e)
    again = run(eng, "big-again", big)["out"]
    assert again.error is None and again.finish_reason == "length"
    assert eng.kv.usage_ratio == 0


@pytest.mark.timeout(120)
def test_a_request_queued_behind_others_is_refused_when_its_turn_finds_no_room(llm):
    """Pinned after the request was queued: refused when admission finds it can never fit (not only at intake)."""
    eng = llm.engine
    eng.prefix_cache.clear()
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    eng.add_request("doc", tokens(DOC, 5), params, RequestOptions(dense_tail_tokens=0, pin_prompt=True))
    eng.add_request("big", tokens(900, 6), params)  # fits now (nothing pinned yet): queued behind the upload
    finished, steps = {}, 0
    while eng.has_unfinished():
        assert steps < MAX_STEPS, "still unfinished (waiting forever?)"
        finished |= {o.request_id: o for o in eng.step() if o.finished}
        steps += 1
    assert finished["doc"].error is None
    assert finished["big"].error_code == KV_CACHE_EXCEEDED and "pinned" in finished["big"].error
    for e in [e for e in eng.prefix_cache.entries if e.pins]:
        e.pins = 0
    eng.prefix_cache.clear()
