"""GPU only (skipped on the CPU): the decode step replayed from captured CUDA graphs gives the same tokens as the
same step run eagerly, for mixed lengths, GQA, and dense and sparse decode in one batch; padded buckets too."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig, ModelConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")]


def model(dtype: torch.dtype) -> LlamaForCausalLM:
    cfg = ModelConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
                      lighthouse=LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0],
                                                  min_seq_len=512))
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(dtype).eval()


def tokens(eng: LLMEngine, n_requests: int) -> dict[str, list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    for i in range(n_requests):
        n = [40, 700, 1500, 3000, 90, 2200][i % 6]
        ids = torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(i)).tolist()
        eng.add_request(f"r{i}", ids, params, RequestOptions(prefill="sparse", decode="sparse" if i % 2 else "dense"))
    out: dict[str, list[int]] = {}
    while eng.has_unfinished():
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(o.token_ids)
    return out


@pytest.mark.parametrize("n_requests", [1, 3, 8])
def test_graph_replay_gives_the_same_tokens_as_eager(n_requests):
    m = model(torch.float32)
    cfg = dict(kv_cache_bytes=1 << 30, max_num_seqs=8, block_size=64)
    graphs = LLMEngine(m, None, EngineConfig(**cfg))
    assert graphs.runner.graphs, "no graph was captured"
    eager = LLMEngine(m, None, EngineConfig(enforce_eager=True, **cfg))
    assert not eager.runner.graphs
    assert tokens(graphs, n_requests) == tokens(eager, n_requests)
    assert graphs.kv.usage_ratio == 0 and eager.kv.usage_ratio == 0


def test_graph_replay_in_bf16_matches_eager_logits_closely():
    m = model(torch.bfloat16)
    cfg = dict(kv_cache_bytes=1 << 30, max_num_seqs=4, block_size=128, max_prefill_chunk_ms=None)  # one schedule
    engines = [LLMEngine(m, None, EngineConfig(enforce_eager=e, **cfg)) for e in (False, True)]
    logits = []
    for eng in engines:
        seen = []
        inner = eng.runner.decode
        eng.runner.decode = lambda kvs, last, inner=inner, seen=seen: seen.append(inner(kvs, last).clone()) or seen[-1]
        tokens(eng, 4)
        logits.append(torch.cat(seen))
    assert logits[0].shape == logits[1].shape
    assert torch.equal(logits[0], logits[1]) or (logits[0] - logits[1]).abs().max() < 0.05


@pytest.mark.parametrize("H,H_kv", [(8, 8), (32, 8)])
def test_cached_tail_through_the_paged_kernel_matches_dense_attention_in_bf16(H, H_kv):
    from lighthouse.engine.cache.manager import KVCacheManager
    from lighthouse.engine.cache.spec import CacheShape
    from lighthouse.engine.prefill_attention import CachedTail
    from lighthouse.ops import attention_with_cache

    torch.manual_seed(H)
    D, n, start = 128, 70_000, 70_000 - 64
    shape = CacheShape(1, H_kv, H, D, torch.bfloat16, torch.device("cuda"), 128)
    kv = KVCacheManager(shape, (n // 128 + 8) * shape.bytes_per_block)
    seq = kv.allocate(kv.reservation(n))
    blocks = seq.blocks[0][::-1]  # a table that is not one consecutive run
    k, v = (torch.randn(1, H_kv, n, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    kv.pool.write(kv.pool.slots(blocks, 0, n), k[0].transpose(0, 1), v[0].transpose(0, 1))
    q = torch.randn(1, H, n - start, D, device="cuda", dtype=torch.bfloat16)
    tail = CachedTail.make(kv.pool, start, n)
    assert tail.paged
    out = tail.attention(q, kv.pool.k, kv.pool.v, CachedTail.table_of(kv.pool, blocks)).float()
    ref = attention_with_cache(q.double(), k.double(), v.double()).float()
    low = attention_with_cache(q, k, v).float()  # the dense path in bf16: the error to stay within 2x of
    err, err_low = (out - ref).abs().max().item(), (low - ref).abs().max().item()
    assert err <= 2 * err_low + 1e-3, f"paged tail max err {err:.2e} vs dense bf16 {err_low:.2e}"


def logprobs_with(eng: LLMEngine, opts: list[RequestOptions]) -> dict[str, torch.Tensor]:
    """Greedy, 24 tokens: each request's logprobs of its tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=0)
    for i, o in enumerate(opts):
        n = [1500, 3000, 700, 2200][i % 4]
        ids = torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(i)).tolist()
        eng.add_request(f"r{i}", ids, params, o)
    out: dict[str, list[float]] = {}
    while eng.has_unfinished():
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(e.logprob for e in o.logprobs or [])
    return {k: torch.tensor(v) for k, v in out.items()}


@pytest.mark.parametrize("rope", ["before_pool", "after_select_unscaled"])
def test_compact_and_full_sessions_in_one_graph_batch_equal_eager(rope):
    """Compact, full sparse-decode and dense-decode sessions decoded together from captured graphs give the tokens
    of the eager step; with after_select + unscaled frequencies, sparse rows are rotated with the other frequencies
    inside the graph. A compact follow-up (prefix-cache hit on a compact document) runs on the GPU too."""
    scaled = {}
    if rope != "before_pool":
        scaled = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 512})
    cfg = ModelConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
                      lighthouse=LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0],
                                                  min_seq_len=512, rope="before_pool" if not scaled else "after_select",
                                                  rope_freqs="model" if not scaled else "unscaled"), **scaled)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).eval()
    assert scaled == {} or not torch.equal(m.inv_freq, m.lighthouse_inv_freq)
    opts = [RequestOptions(kv_mode="compact"), RequestOptions(decode="sparse"), RequestOptions(decode="dense"),
            RequestOptions(kv_mode="compact")]
    cfg = dict(kv_cache_bytes=1 << 30, max_num_seqs=8, block_size=64)
    graphs = LLMEngine(m, None, EngineConfig(**cfg))
    eager = LLMEngine(m, None, EngineConfig(enforce_eager=True, **cfg))
    got, want = logprobs_with(graphs, opts), logprobs_with(eager, opts)
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)
    dense = logprobs_with(eager, [RequestOptions(decode="dense")])["r0"]
    assert not torch.allclose(got["r0"][1:], dense[1:], atol=1e-4)  # sparse decode attends to other entries
    doc = torch.randint(32, 127, (2000,), generator=torch.Generator().manual_seed(9)).tolist()
    for eng in (graphs, eager):
        for q in (11, 12):
            question = torch.randint(32, 127, (64,), generator=torch.Generator().manual_seed(q)).tolist()
            eng.add_request(f"f{q}", doc + question, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
                            RequestOptions(kv_mode="compact"))
            cached = 0
            while eng.has_unfinished():
                for o in eng.step():
                    cached = o.prefill.cached_tokens if o.prefill is not None else cached
        assert cached == (0 if rope != "before_pool" else 2000)  # (no compact reuse under unscaled frequencies)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_overlapped_decode_through_graphs_gives_the_same_outputs(dtype):
    """engine/overlap.py on the device it is for: the next step launched from the graph's sampled ids before this
    step's tokens are read (dense and sparse rows, greedy and seeded sampling with logprobs, stops at different
    steps) gives what reading every step first gives, and steps did run overlapped."""
    m = model(dtype)
    cfg = dict(kv_cache_bytes=1 << 30, max_num_seqs=8, block_size=64, max_prefill_chunk_ms=None)
    engines = [LLMEngine(m, None, EngineConfig(overlap_decode=on, **cfg)) for on in (False, None)]
    assert engines[1].overlap.enabled and engines[1].runner.graphs  # None: the default, on with CUDA
    outs = []
    for eng in engines:
        for i in range(6):
            n = [40, 700, 1500, 3000, 90, 2200][i]
            ids = torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(i)).tolist()
            params = SamplingParams(temperature=0.0 if i % 3 else 0.8, seed=i, max_tokens=12 + 5 * i, logprobs=2,
                                    ignore_eos=True, stop_token_ids=[64 + i] if i >= 3 else [])
            eng.add_request(f"r{i}", ids, params, RequestOptions(prefill="sparse", decode="sparse" if i % 2 else "dense"))
        got: dict[str, list] = {}
        while eng.has_unfinished():
            for o in eng.step():
                lps = [(t.token_id, round(t.logprob, 3)) for t in o.logprobs or []]
                prev = got.get(o.request_id, ([], [], None))
                got[o.request_id] = (prev[0] + o.token_ids, prev[1] + lps, o.finish_reason)
        assert eng.kv.usage_ratio == 0 and eng.overlap.inflight is None
        outs.append(got)
    assert outs[1] == outs[0]
    assert engines[1].overlap.chained > 10
