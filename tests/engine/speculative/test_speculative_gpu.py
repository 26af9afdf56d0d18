"""GPU only (skipped on the CPU): with the bundled checkpoint in bf16 and CUDA graphs on for the ordinary decode
step, greedy outputs with prompt-lookup speculation equal those without, dense and sparse decode, a batch."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]


@pytest.fixture(scope="module")
def engine():
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine

    return load_engine(None, EngineConfig(max_num_seqs=8, kv_cache_bytes=4 << 30, max_prefill_chunk_ms=None),
                       device="cuda", dtype="bfloat16")


def generate(engine, prompts, options):
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    out = {i: [] for i in range(len(prompts))}
    for i, ids in enumerate(prompts):
        engine.add_request(f"gpu-{id(options)}-{i}", ids, params, options)
    while engine.has_unfinished():
        for o in engine.step():
            assert not o.error, o.error
            out[int(o.request_id.rsplit("-", 1)[1])] += o.token_ids
    return [out[i] for i in range(len(prompts))]


@pytest.mark.parametrize("decode,n", [("dense", 2000), ("sparse", 9000)])
def test_bf16_greedy_outputs_are_identical_with_speculation(engine, decode, n):
    from lighthouse.train.passkey import passkey_prompts

    prompts = [ids.tolist() for _, ids, _ in passkey_prompts(n, [0.3, 0.7], 2, seed=5)]
    assert engine.runner.graphs, "the ordinary decode step runs from CUDA graphs"
    base = generate(engine, prompts, RequestOptions(decode=decode))
    before = engine.speculator.accepted
    spec = generate(engine, prompts, RequestOptions(decode=decode, speculative=Speculation("prompt_lookup", 4)))
    assert spec == base
    assert engine.speculator.accepted > before
    assert engine.runner.verify_graphs, "the verify step ran from its CUDA graphs too"
