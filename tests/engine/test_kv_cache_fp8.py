"""The float8 KV cache (`kv_cache_dtype="fp8_e4m3"`): the cast's stated error, the pool storing and reading it, the
paged decode kernel reading a float8 cache as the reference does, and the engine holding twice the positions."""

from __future__ import annotations

import os

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.pool import FP8, quantize_fp8
from lighthouse.engine.cache.spec import CacheShape
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.presets import model_preset
from lighthouse.ops import paged_decode_attention, paged_decode_attention_ref

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
needs_triton = pytest.mark.skipif(not (INTERPRETING or torch.cuda.is_available()),
                                  reason="needs TRITON_INTERPRET=1 (CPU) or a GPU")


def test_the_cast_is_within_its_stated_error_and_saturates():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=g) * s for s in (1e-3, 0.1, 1.0, 30.0)] + [torch.tensor([1e4, -1e4])])
    got = quantize_fp8(x).float()
    big = x.abs() >= 2**-6  # the normal range: 3 mantissa bits, half an ulp = 2^-4 relative
    assert ((got - x).abs() <= 2**-4 * x.abs() + 1e-12)[big & (x.abs() <= 448)].all()
    assert ((got - x).abs() <= 2**-10)[~big].all()  # subnormals: absolute
    assert got[-2] == 448 and got[-1] == -448 and not got.isnan().any()  # saturates (a plain cast gives NaN)


def shape(dtype=torch.float32, cache=FP8) -> CacheShape:
    return CacheShape(2, 2, 4, 16, dtype, torch.device("cpu"), 16, cache)


def test_the_pool_stores_float8_and_reads_back_the_cast_values_in_the_models_dtype():
    kv = KVCacheManager(shape(), 64 * shape().bytes_per_block)
    assert kv.pool.k.dtype == FP8 and shape().bytes_per_block * 4 == shape(cache=None).bytes_per_block
    seq = kv.allocate(kv.reservation(40))
    blocks = seq.blocks[1][::-1]  # not one consecutive run: the gathered read
    k, v = torch.randn(40, 2, 16) * 3, torch.randn(40, 2, 16)
    kv.pool.write(kv.pool.slots(blocks, 0, 40), k, v)
    rk, rv = kv.pool.read(blocks, 40)
    assert rk.dtype == torch.float32
    assert torch.equal(rk[0].transpose(0, 1), quantize_fp8(k).float())
    assert torch.equal(rv[0].transpose(0, 1), quantize_fp8(v).float())
    other = kv.allocate(kv.reservation(40))
    kv.pool.copy_block(blocks[0], other.blocks[1][0], 16)  # copy on write of a shared block keeps the bytes
    assert torch.equal(kv.pool.k[other.blocks[1][0]].view(torch.uint8), kv.pool.k[blocks[0]].view(torch.uint8))


def paged_case(dtype, device="cpu"):
    g = torch.Generator().manual_seed(1)
    NB, BS, H_kv, H, D = 12, 16, 2, 8, 32
    k = quantize_fp8(torch.randn(NB, BS, H_kv, D, generator=g) * 2).to(device)
    v = quantize_fp8(torch.randn(NB, BS, H_kv, D, generator=g)).to(device)
    bt = torch.randperm(NB, generator=g)[:10].view(2, 5).to(torch.int32).to(device)
    c = dict(q=torch.randn(2, H, D, generator=g).to(dtype).to(device), k_cache=k, v_cache=v, block_tables=bt,
             seq_lens=torch.tensor([70, 9], dtype=torch.int32, device=device),
             per_head=torch.tensor([0, 1], dtype=torch.int32, device=device), hole_start=None, hole_end=None)
    return c


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_reference_reads_a_float8_cache_as_its_values_in_qs_dtype(dtype):
    c = paged_case(dtype)
    got = paged_decode_attention_ref(**c)
    want = paged_decode_attention_ref(**{**c, "k_cache": c["k_cache"].to(dtype), "v_cache": c["v_cache"].to(dtype)})
    assert got.dtype == dtype and torch.equal(got, want)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_the_triton_kernel_reads_a_float8_cache_like_the_reference(dtype, num_splits):
    c = paged_case(dtype, "cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu")
    got = paged_decode_attention(**c, num_splits=num_splits, backend="triton")
    want = paged_decode_attention_ref(**c)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="the float16 dots run on a GPU only")
@pytest.mark.parametrize("magnitude", [1.0, 3e4, 2e5])
def test_the_kernels_float16_dots_keep_large_queries_finite_and_close(magnitude):
    """On a GPU a float8 cache's dots run in float16 (q scaled by the softmax scale first): queries far past float16's
    65,504 still give the reference's softmax, not inf/NaN."""
    c = paged_case(torch.bfloat16, "cuda")
    c["q"] = (c["q"].float() * magnitude / c["q"].float().abs().max()).to(torch.bfloat16)
    got = paged_decode_attention(**c, backend="triton")
    want = paged_decode_attention_ref(**c)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_a_float8_cache_is_refused_with_a_mismatched_value_cache():
    c = paged_case(torch.float32)
    with pytest.raises(ValueError, match="float8"):
        paged_decode_attention_ref(**{**c, "v_cache": c["v_cache"].float()})


def test_the_engine_holds_twice_the_positions_and_generates_close_to_the_full_precision_cache():
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval().to(torch.bfloat16)
    engines = {d: LLMEngine(model, None, EngineConfig(kv_cache_bytes=4 << 20, block_size=16, kv_cache_dtype=d,
                                                      max_prefill_chunk_ms=None))
               for d in ("auto", "fp8_e4m3")}
    assert engines["fp8_e4m3"].kv.allocator.usable + 1 == 2 * (engines["auto"].kv.allocator.usable + 1)
    prompt = torch.randint(32, 127, (700,), generator=torch.Generator().manual_seed(2)).tolist()
    logits = {}
    for d, eng in engines.items():
        seen = []
        inner = eng.runner.decode
        eng.runner.decode = lambda kvs, last, inner=inner, seen=seen: seen.append(inner(kvs, last).clone()) or seen[-1]
        eng.add_request("r", prompt, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True),
                        RequestOptions("sparse", "sparse", 64))
        while eng.has_unfinished():
            eng.step()
        logits[d] = torch.cat(seen).float()
    a, b = logits["auto"], logits["fp8_e4m3"]
    assert a.shape == b.shape and torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.98


def test_an_unknown_cache_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of"):
        EngineConfig(kv_cache_dtype="int4")
