"""The startup warm-up (engine/warmup.py): one short request through every serving path before the engine takes real
ones, on CUDA by default, and nothing left behind."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine import EngineConfig, LLMEngine
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.warmup import warmup_prompt_len
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.model.presets import model_preset


def tiny(**overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return LlamaForCausalLM(cfg).eval()


def engine_recording_plans(model, **config) -> tuple[LLMEngine, list]:
    """An engine built with `config`, whose prefills' plans are recorded from the start (the warm-up runs in init)."""
    from lighthouse.engine import model_runner

    plans = []
    inner = model_runner.ModelRunner.start_prefill

    def start_prefill(self, kv, prompt_ids, plan, **kw):
        plans.append((len(prompt_ids), plan.sparse, plan.sparse_decode, plan.compact, kw["cached"]))
        return inner(self, kv, prompt_ids, plan, **kw)

    model_runner.ModelRunner.start_prefill = start_prefill
    try:
        eng = LLMEngine(model, None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, **config))
    finally:
        model_runner.ModelRunner.start_prefill = inner
    return eng, plans


def test_the_warm_up_runs_every_serving_path_once_and_leaves_nothing_behind():
    eng, plans = engine_recording_plans(tiny(), warmup=True)
    n = warmup_prompt_len(eng)
    assert n == 512 + 64 + 16  # the tiny preset's min_seq_len, the default dense tail, a few more
    # sparse prefill with dense decode, with sparse decode, compact; dense prefill; each at n and n + 1 tokens; then a
    # prompt left in the prefix cache and questions reusing all of it but their last 8, 16, 32 tokens (2 query heads
    # per KV head: 16, 32, 64 rows of the cached tail's kernel)
    paths = [(True, False, False), (True, True, False), (True, True, True), (False, False, False)]
    # then the verify step of speculative decoding at 2, 3, 5, 9 queries a row: dense decode after 16 tokens, sparse
    # decode after n
    assert plans == [(m, *p, 0) for p in paths for m in (n, n + 1)] + [(n, True, False, False, 0)] + [
        (n, True, False, False, n - k) for k in (8, 16, 32)] + [
        (16, False, False, False, 0), (n, True, True, False, 0)] * 4
    assert eng.speculator.proposed == eng.speculator.accepted == 0, "the metrics' counters are as before"
    assert (n - 64) % 16 == 0  # the sparse length: one of Triton's integer specializations, then the other
    assert not eng.has_unfinished() and not eng._requests
    assert eng.kv.allocator.num_free == eng.kv.allocator.usable  # every block back
    assert eng.prefix_cache is not None and eng.kv.cached_ratio == 0.0  # no prefix-cache entry
    stats = eng.stats()
    assert stats["running"] == stats["waiting"] == 0 and stats["kv_cache_usage"] == 0.0
    # and it serves as an engine without the warm-up does
    cold, _ = engine_recording_plans(tiny(), warmup=False)
    prompt = torch.randint(32, 127, (700,), generator=torch.Generator().manual_seed(3)).tolist()
    outs = {"warm": [], "cold": []}
    for name, e in (("warm", eng), ("cold", cold)):
        e.add_request("q", prompt, SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
        while e.has_unfinished():
            for o in e.step():
                outs[name] += o.token_ids
    assert outs["warm"] == outs["cold"] and len(outs["warm"]) == 5


def test_no_warm_up_on_the_cpu_by_default_and_dense_only_without_lighthouse_layers():
    _, plans = engine_recording_plans(tiny())
    assert plans == []  # the CPU compiles nothing: the default skips it
    no_lh = model_preset("tiny")
    no_lh.lighthouse.enabled = False
    _, plans = engine_recording_plans(LlamaForCausalLM(no_lh).eval(), warmup=True)
    n = 256 + 64 + 16  # the hits' prompt: a dense entry is reused from prefix_cache_min_tokens on
    assert plans == [(64 + 16, False, False, False, 0), (64 + 17, False, False, False, 0), (n, False, False, False, 0)] + [
        (n, False, False, False, n - k) for k in (8, 16, 32)] + [(16, False, False, False, 0)] * 4


def test_a_path_that_fails_in_the_warm_up_is_logged_and_the_others_still_run(caplog, monkeypatch):
    from lighthouse.engine import model_runner

    inner = model_runner.ModelRunner.start_prefill

    def start_prefill(self, kv, prompt_ids, plan, **kw):
        if plan.compact:
            raise RuntimeError("injected compact fault")
        return inner(self, kv, prompt_ids, plan, **kw)

    monkeypatch.setattr(model_runner.ModelRunner, "start_prefill", start_prefill)
    with caplog.at_level("INFO", logger="lighthouse.engine.warmup"):
        eng = LLMEngine(tiny(), None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, warmup=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("kv_mode=compact failed" in w and "RuntimeError" in w for w in warnings)
    done = [r.getMessage() for r in caplog.records if "requests through" in r.getMessage()]
    ran = done[0].split(" through ")[1].split(" (prefill")[0].split(", ")
    assert len(done) == 1 and len(ran) == 6 + 3 + 8 and not [r for r in ran if "compact" in r]  # the others ran
    assert not eng.has_unfinished() and eng.kv.allocator.num_free == eng.kv.allocator.usable


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the default warm-up runs on CUDA only")
def test_on_cuda_the_engine_warms_up_by_default(caplog):
    with caplog.at_level("INFO", logger="lighthouse.engine.warmup"):
        eng = LLMEngine(tiny().to("cuda", torch.bfloat16), None, EngineConfig(kv_cache_bytes=64 << 20, block_size=16))
    done = [r.getMessage() for r in caplog.records if "requests through" in r.getMessage()]
    assert len(done) == 1 and len(done[0].split(" through ")[1].split(" (prefill")[0].split(", ")) == 8 + 3 + 8
    assert not eng.has_unfinished() and eng.kv.allocator.num_free == eng.kv.allocator.usable


def test_the_warm_up_runs_the_verify_step_at_every_query_bucket(monkeypatch):
    """Speculative decoding's verify step (a Triton kernel variant per queries-a-row bucket on CUDA) runs in the
    warm-up at each of VERIFY_QUERIES, with dense and with sparse decode, whatever the model generates."""
    from lighthouse.engine import model_runner

    seen = []
    inner = model_runner.ModelRunner.verify

    def verify(self, kvs, tokens):
        seen.append((max(len(t) for t in tokens), all(kv.sparse for kv in kvs)))
        return inner(self, kvs, tokens)

    monkeypatch.setattr(model_runner.ModelRunner, "verify", verify)
    LLMEngine(tiny(), None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, warmup=True))
    # each request's first verify step has all its k = q - 1 drafts (later ones fewer, as max_tokens leaves room)
    assert {(q, sparse) for q in model_runner.VERIFY_QUERIES for sparse in (False, True)} <= set(seen)
    assert max(q for q, _ in seen) == max(model_runner.VERIFY_QUERIES)
