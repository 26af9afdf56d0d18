"""Fault injection: an exception or out-of-memory in one request's prefill or decode step fails that request with a
clear error and leaves the others running with the tokens they would have had; over HTTP too (the openai
package sees a 500 or 503, a stream gets an error event, /health stays 200)."""

from __future__ import annotations

import threading

import openai
import pytest
import torch

from lighthouse.engine.errors import INTERNAL_ERROR, OUT_OF_MEMORY
from lighthouse.engine.sampling import SamplingParams

PROMPTS = {"a": [1, 2, 3, 4], "bad": [5, 6, 7], "c": [8, 9, 10, 11, 12]}
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


def run_all(engine, prompts=PROMPTS) -> dict[str, tuple[list[int], str | None, str | None]]:
    """Run the requests together to the end: id -> (tokens, error, error_code)."""
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, GREEDY)
    got = {rid: ([], None, None) for rid in prompts}
    while engine.has_unfinished():
        for o in engine.step():
            toks, _, _ = got[o.request_id]
            got[o.request_id] = (toks + o.token_ids, o.error, o.error_code)
    return got


def seq_of(engine, kv):
    return next(s for s in engine.scheduler.running if s.kv is kv)


@pytest.fixture()
def engine(ckpt, tiny_llm):
    return tiny_llm(ckpt).engine


@pytest.fixture(scope="module")
def clean(ckpt, tiny_llm):
    return run_all(tiny_llm(ckpt).engine)


@pytest.mark.parametrize("exc,code", [(RuntimeError("kernel bug"), INTERNAL_ERROR),
                                      (torch.OutOfMemoryError("CUDA out of memory"), OUT_OF_MEMORY)])
def test_a_prefill_fault_fails_that_request_alone(engine, clean, monkeypatch, exc, code):
    real = engine.runner.start_prefill

    def prefill(kv, prompt_ids, *a, **kw):
        if prompt_ids.tolist() == PROMPTS["bad"]:
            raise exc
        return real(kv, prompt_ids, *a, **kw)

    monkeypatch.setattr(engine.runner, "start_prefill", prefill)
    got = run_all(engine)
    assert got["bad"][0] == [] and got["bad"][2] == code and "prefill" in got["bad"][1]
    assert got["a"] == clean["a"] and got["c"] == clean["c"]  # untouched
    assert engine.kv.usage_ratio == 0.0  # its blocks were given back
    assert run_all(engine, {"again": PROMPTS["bad"]})["again"][1] is not None  # still failing, engine still up


def test_a_decode_fault_is_traced_to_its_sequence_and_the_others_keep_their_tokens(engine, clean, monkeypatch):
    real = engine.runner.decode
    calls = []

    def decode(kvs, last_tokens):
        calls.append(len(kvs))
        rids = [seq_of(engine, kv).request.request_id for kv in kvs]
        if "bad" in rids and len(seq_of(engine, kvs[0]).output_ids) >= 3:
            raise RuntimeError("illegal value in this sequence's block table")
        return real(kvs, last_tokens)

    monkeypatch.setattr(engine.runner, "decode", decode)
    got = run_all(engine)
    toks, error, code = got["bad"]
    assert code == INTERNAL_ERROR and "decode" in error and "other requests were not affected" in error
    assert toks == clean["bad"][0][: len(toks)] and 3 <= len(toks) < 12
    assert got["a"] == clean["a"] and got["c"] == clean["c"]  # the same greedy tokens, to the end
    assert 1 in calls  # the batch was split down to the sequence at fault
    assert engine.kv.usage_ratio == 0.0


def test_decode_out_of_memory_in_a_big_batch_retries_in_halves_and_everyone_finishes(engine, clean, monkeypatch):
    real = engine.runner.decode
    failed = []

    def decode(kvs, last_tokens):
        if len(kvs) == 3 and not failed:  # the full batch runs out of memory once; halves fit
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(kvs, last_tokens)

    monkeypatch.setattr(engine.runner, "decode", decode)
    got = run_all(engine)
    assert failed and got == clean


def test_a_device_fatal_error_stops_the_engine_instead_of_failing_one_request(engine, monkeypatch):
    def decode(kvs, last_tokens):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(engine.runner, "decode", decode)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_all(engine)


def test_over_http_one_failing_request_gets_an_error_and_concurrent_ones_finish(ckpt, monkeypatch, loopback_server,
                                                                                settings_for):
    with loopback_server(settings_for(ckpt)) as server:
        engine = server.engine.engine
        real = engine.runner.decode

        def decode(kvs, last_tokens):
            if any(seq_of(engine, kv).request.prompt_ids[1:4] == list(b"BAD") for kv in kvs):
                raise RuntimeError("injected")
            return real(kvs, last_tokens)

        monkeypatch.setattr(engine.runner, "decode", decode)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        results = {}

        def good(i):
            r = client.completions.create(model=server.app.state.model_name, prompt=f"good {i}", max_tokens=40,
                                          temperature=0, extra_body={"ignore_eos": True})
            results[i] = r.usage.completion_tokens

        threads = [threading.Thread(target=good, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=server.app.state.model_name, prompt="BAD", max_tokens=40)
        assert info.value.status_code == 500 and "decode" in info.value.message
        with pytest.raises(openai.APIError, match="decode"):  # streamed: an error event, then the end
            for _ in client.completions.create(model=server.app.state.model_name, prompt="BAD", max_tokens=40,
                                               stream=True):
                pass
        for t in threads:
            t.join(60)
        assert results == {0: 40, 1: 40, 2: 40}
        import httpx

        assert httpx.get(server.url + "/health").status_code == 200
