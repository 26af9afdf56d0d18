"""The paged engine core: batched decode equals one sequence at a time, the sparse-decode context layout is what the
decode kernel reads, and no block is ever lost (aborts, disconnects, n > 1, the prefix cache)."""

from __future__ import annotations

import random

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.spec import CacheShape
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.sparse_context import order_context, to_slots
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.presets import model_preset
from lighthouse.ops.attention import repeat_kv
from lighthouse.ops.paged_attention import paged_decode_attention_ref


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """The tiny preset (GQA 4/2, Lighthouse L2 p4 k128 from 512 tokens on both layers), random fp32 weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(model_preset("tiny")).eval()


def engine(model, **config) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(**{"kv_cache_bytes": 16 << 20, "block_size": 16, "max_prefill_chunk_ms": None, **config}))


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


class Recorder:
    """Wraps the runner's decode: logits per (request, step), keyed through the sequences' kv objects."""

    def __init__(self, eng: LLMEngine):
        self.eng, self.logits = eng, {}
        inner = eng.runner.decode

        def decode(kvs, last_tokens):
            out = inner(kvs, last_tokens)
            owner = {id(s.kv): s for s in eng.scheduler.running}
            for b, kv in enumerate(kvs):
                s = owner[id(kv)]
                self.logits.setdefault((s.request.request_id, s.index), []).append(out[b].clone())
            return out

        eng.runner.decode = decode


def run_all(eng: LLMEngine, requests: list[tuple[str, list[int], SamplingParams, RequestOptions]]) -> dict:
    for rid, prompt, params, opts in requests:
        eng.add_request(rid, prompt, params, opts)
    tokens: dict = {}
    while eng.has_unfinished():
        for out in eng.step():
            tokens.setdefault((out.request_id, out.index), []).extend(out.token_ids)
    return tokens


MIXED = [  # (prompt length, decode): short dense prompts, and long ones with sparse prefill and either decode
    (37, "dense"), (700, "sparse"), (123, "dense"), (650, "dense"), (811, "sparse"), (16, "dense"),
]


def test_batched_paged_decode_equals_one_sequence_at_a_time():
    model = tiny_model()
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    reqs = [(f"r{i}", ids(n, i), params, RequestOptions(prefill="sparse", decode=d, dense_tail_tokens=32))
            for i, (n, d) in enumerate(MIXED)]
    together = engine(model)
    rec_together = Recorder(together)
    out_together = run_all(together, reqs)
    alone_tokens, alone_logits = {}, {}
    for req in reqs:
        eng = engine(model)
        rec = Recorder(eng)
        alone_tokens.update(run_all(eng, [req]))
        alone_logits.update(rec.logits)
    assert out_together == alone_tokens
    for key, steps in alone_logits.items():
        for a, b in zip(steps, rec_together.logits[key], strict=True):
            assert torch.allclose(a, b, atol=1e-5, rtol=0), f"{key}: max diff {(a - b).abs().max():.2e}"


def test_sparse_and_dense_decode_differ_and_batch_together():
    model = tiny_model(1)
    eng = engine(model)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=0)
    prompt = ids(700, 7)
    lp = {}
    for mode in ("dense", "sparse"):
        eng.add_request(mode, prompt, params, RequestOptions(prefill="sparse", decode=mode, dense_tail_tokens=32))
    while eng.has_unfinished():
        for out in eng.step():
            lp.setdefault(out.request_id, []).extend(e.logprob for e in out.logprobs or [])
    assert lp["dense"][0] == lp["sparse"][0]  # the first token comes from the prefill
    assert lp["dense"][1:] != lp["sparse"][1:]  # later ones attend to different contexts


@pytest.mark.parametrize("H,H_kv", [(4, 2), (4, 4), (8, 2)])
def test_sparse_context_layout_is_what_the_decode_kernel_reads(H, H_kv):
    """Per-query-head entries written with to_slots, real entries first (order_context), a hole over the rest:
    the paged decode reference attends exactly to each head's real entries and the positions after them."""
    torch.manual_seed(H * 10 + H_kv)
    D, S, tail, bs = 8, 45, 7, 16
    shape = CacheShape(1, H_kv, H, D, torch.float32, torch.device("cpu"), bs)
    kv = KVCacheManager(shape, 64 * shape.bytes_per_block)
    seq = kv.allocate(kv.reservation(1, (0,), S + tail))
    k_sel, v_sel = torch.randn(1, H, S, D), torch.randn(1, H, S, D)
    real = torch.rand(1, H, S) > 0.3
    k_ord, v_ord, n_real = order_context(k_sel, v_sel, real)
    k_tail, v_tail = torch.randn(1, H_kv, tail, D), torch.randn(1, H_kv, tail, D)
    r = H // H_kv
    ctx_k = torch.cat([k_ord, repeat_kv(k_tail, r)], dim=2)  # (1, H, S + tail, D): entries of every head
    ctx_v = torch.cat([v_ord, repeat_kv(v_tail, r)], dim=2)
    slots = kv.pool.slots(seq.ctx_blocks[0], 0, (S + tail) * r)
    kv.pool.write(slots, to_slots(ctx_k, H_kv), to_slots(ctx_v, H_kv))
    q = torch.randn(1, H, D)
    table = torch.tensor([seq.ctx_blocks[0] + [0] * 4], dtype=torch.int32)
    out = paged_decode_attention_ref(q, kv.pool.k, kv.pool.v, table, torch.tensor([S + tail], dtype=torch.int32),
                                     torch.tensor([1], dtype=torch.int32), n_real[None], torch.tensor([S], dtype=torch.int32))
    for h in range(H):
        keys = torch.cat([k_sel[0, h][real[0, h]], repeat_kv(k_tail, r)[0, h]])
        vals = torch.cat([v_sel[0, h][real[0, h]], repeat_kv(v_tail, r)[0, h]])
        ref = torch.softmax(keys @ q[0, h] * D**-0.5, dim=0) @ vals
        assert torch.allclose(out[0, h], ref, atol=1e-5), f"head {h}: max diff {(out[0, h] - ref).abs().max():.2e}"


def test_200_requests_with_aborts_and_disconnects_return_every_block():
    model = tiny_model(2)
    eng = engine(model, max_num_seqs=8, prefix_cache_min_tokens=64)
    usable = eng.kv.allocator.usable
    rng = random.Random(0)
    doc = ids(300, 99)  # shared by some prompts: prefix-cache hits share its blocks
    live: list[str] = []
    finished: set[str] = set()
    for i in range(200):
        n = rng.choice([5, 40, 130, 130, 40, 600])
        prompt = doc + ids(rng.randint(1, 40), i) if rng.random() < 0.3 else ids(n, i)
        params = SamplingParams(temperature=rng.choice([0.0, 1.0]), max_tokens=rng.randint(1, 6), n=rng.choice([1, 1, 2]),
                                seed=i, ignore_eos=True)
        opts = RequestOptions(prefill=rng.choice(["sparse", "dense"]), decode=rng.choice(["dense", "sparse"]),
                              dense_tail_tokens=rng.choice([0, 16]), cache_prompt=rng.random() < 0.7)
        eng.add_request(f"q{i}", prompt, params, opts)
        live.append(f"q{i}")
        for _ in range(rng.randint(0, 3)):
            for out in eng.step():
                if out.finished:
                    finished.add(out.request_id)
        if rng.random() < 0.25:  # a client that went away: before its prefill, mid-decode, or after it finished
            eng.abort_request(rng.choice(live))
    while eng.has_unfinished():
        eng.step()
    assert eng.scheduler.running == [] and not eng.scheduler.waiting and eng._requests == {}
    assert eng.kv.usage_ratio == 0
    held = {b for e in eng.prefix_cache.entries for t in e.blocks for b in t}
    assert eng.kv.num_free + len(held) == usable
    eng.prefix_cache.clear()
    assert eng.kv.num_free == usable and all(r == 0 for r in eng.kv.allocator.refs)


def test_usable_capacity_is_at_least_95_percent_of_the_budget():
    model = tiny_model()
    eng = engine(model, kv_cache_bytes=64 << 20, block_size=128)
    assert eng.kv.allocator.usable * eng.kv.shape.bytes_per_block >= 0.95 * (64 << 20)
    assert eng.max_model_len == min(eng.kv.max_tokens, model.config.max_position_embeddings)


@pytest.mark.parametrize("H,H_kv,start,n", [(4, 2, 50, 61), (4, 4, 0, 9), (8, 2, 200, 333)])
def test_a_cached_tail_attends_causally_through_the_paged_kernel_layout(H, H_kv, start, n):
    """The dense tail / a prefix-cache suffix on GPU: each query as one more head of its group, a hole after it."""
    from lighthouse.engine.prefill_attention import CachedTail
    from lighthouse.ops import attention_with_cache

    torch.manual_seed(start + n)
    D, bs = 16, 16
    shape = CacheShape(1, H_kv, H, D, torch.float32, torch.device("cpu"), bs)
    kv = KVCacheManager(shape, 64 * shape.bytes_per_block)
    seq = kv.allocate(kv.reservation(n))
    k, v = torch.randn(1, H_kv, n, D), torch.randn(1, H_kv, n, D)
    kv.pool.write(kv.pool.slots(seq.blocks[0], 0, n), k[0].transpose(0, 1), v[0].transpose(0, 1))
    q = torch.randn(1, H, n - start, D)
    tail = CachedTail(True, start, n)
    tail.ROWS = 8  # several kernel calls per tail
    out = tail.attention(q, kv.pool.k, kv.pool.v, torch.tensor([seq.blocks[0]], dtype=torch.int32))
    ref = attention_with_cache(q, k, v)
    assert torch.allclose(out, ref, atol=1e-5), f"max diff {(out - ref).abs().max():.2e}"
