"""GPU only (skipped on the CPU): the CUDA paths of a prefill in pieces. cuDNN's two calls merged by log-sum-exp
equal masked attention; a bf16 prefill in pieces (paged tail, fused kernels, chunked projections) gives the
logits and cache of one pass; the result matches the model's own forward."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import PrefillTask
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.ops.attention import attention_with_cache

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_a_query_chunk_by_cudnn_and_log_sum_exp_equals_masked_attention():
    torch.manual_seed(0)
    Nk, Nq = 8192, 3000
    q = torch.randn(1, 8, Nq, 128, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn(1, 4, Nk, 128, device="cuda", dtype=torch.bfloat16), torch.randn(1, 4, Nk, 128, device="cuda",
                                                                                       dtype=torch.bfloat16)
    got = attention_with_cache(q, k, v)
    mask = torch.arange(Nk, device="cuda")[None] <= torch.arange(Nk - Nq, Nk, device="cuda")[:, None]
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), kr.float(), vr.float(), attn_mask=mask)
    assert (got.float() - want).abs().max().item() < 2e-2


def model(dtype: torch.dtype) -> LlamaForCausalLM:
    cfg = ModelConfig(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
                      lighthouse=LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0, 3],
                                                  min_seq_len=512))
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decode,tail", [("dense", 0), ("dense", 64), ("sparse", 64), ("dense", 1000)])
def test_a_prefill_in_pieces_equals_one_pass(dtype, decode, tail):
    """fp32: token chunks of 1024 in pieces equal one chunk in one pass to 1e-4 (the paged tail, projections
    written in place, the op). bf16: the same chunks in pieces or in one pass are bit for bit equal (a budget only
    decides where the engine stops); other chunk sizes round differently (GEMM shapes, cuDNN's two calls), which
    can flip one of the op's top-k choices at a few positions of a random model, so they are not compared."""
    m = model(dtype)
    eng = LLMEngine(m, None, EngineConfig(kv_cache_bytes=1 << 30, max_num_seqs=4))
    prompt = torch.randint(32, 127, (6000,), generator=torch.Generator().manual_seed(1)).tolist()
    results = []
    for chunk, budget in (((1 << 15) if dtype == torch.float32 else 1024, None), (1024, 0.0)):
        req = eng.make_request(f"r{chunk}", prompt, SamplingParams(max_tokens=2),
                               RequestOptions("sparse", decode, tail, cache_prompt=False))
        kv = eng.kv.allocate(req.reservation)
        task = PrefillTask(m, eng.kv.pool, kv, prompt, req.plan, chunk_tokens=chunk)
        pieces = 1
        while (logits := task.run(budget)) is None:
            pieces += 1
        cache = [eng.kv.pool.read(kv.blocks[i], len(prompt))[0].float().clone() for i in range(4)]
        results.append((logits, cache, pieces))
        eng.kv.free(kv)
    (l1, c1, p1), (l2, c2, p2) = results
    assert p1 == 1 and p2 > 12
    assert l1.argmax() == l2.argmax()
    if dtype == torch.float32:
        torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-4)
        for a, b in zip(c1, c2):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(c1, c2))
    if tail == 0 and dtype == torch.float32:  # one pass is the model's forward (the op in layers 1-2)
        ref = m(torch.tensor([prompt], device="cuda"), logits_to_keep=1).logits[0, -1].float()
        torch.testing.assert_close(l1, ref, rtol=1e-4, atol=1e-4)
