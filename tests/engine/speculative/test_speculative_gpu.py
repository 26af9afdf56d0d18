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


def _prepared_real_model():
    """The SmolLM2-135M-Instruct checkpoint folder if `lighthouse models prepare smollm2-135m-instruct` made it here."""
    from lighthouse.catalog import known_model, models_dir
    from lighthouse.catalog.registry import is_prepared

    model = known_model("smollm2-135m-instruct")
    folder = models_dir() / model.name
    return folder if is_prepared(folder, model) else None


@pytest.mark.skipif(_prepared_real_model() is None, reason="needs `lighthouse models prepare smollm2-135m-instruct`")
def test_bf16_greedy_outputs_are_identical_with_speculation_on_the_real_model():
    """SmolLM2-135M-Instruct (dense: no Lighthouse layers) in bf16 with CUDA graphs: a prompt that repeats a pattern,
    so that prompt lookup's drafts are accepted, and two ordinary prompts in one batch."""
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine

    eng = load_engine(str(_prepared_real_model()), EngineConfig(max_num_seqs=8, kv_cache_bytes=2 << 30),
                      device="cuda", dtype="bfloat16")
    tok = eng.tokenizer
    texts = ["red, green, blue, yellow; " * 40, "The capital of France is", "def fibonacci(n):\n    "]
    prompts = [tok.encode(t) for t in texts]
    base = generate(eng, prompts, RequestOptions())
    spec = generate(eng, prompts, RequestOptions(speculative=Speculation("prompt_lookup", 4)))
    assert spec == base
    assert eng.speculator.accepted > 0
