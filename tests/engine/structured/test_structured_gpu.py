"""GPU only (skipped on the CPU): structured output with the bundled checkpoint in bf16 and the decode step's CUDA
graphs on. The mask is applied to the logits the graph wrote: unconstrained rows decode the same tokens whether
their batch neighbours have grammars or not (same batch size, so the same graph), the grammared rows follow their
schema, and greedy structured output is identical with and without prompt-lookup speculation."""

from __future__ import annotations

import json

import pytest
import torch

from lighthouse.engine.options import RequestOptions, Speculation, StructuredOutput
from lighthouse.engine.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")]

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 120}}}
ENDLESS = {"type": "object", "required": ["items"], "additionalProperties": False,  # never completes in 48 tokens
           "properties": {"items": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 999}}}


@pytest.fixture(scope="module")
def engine():
    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine

    eng = load_engine(None, EngineConfig(max_num_seqs=8, kv_cache_bytes=4 << 30, max_prefill_chunk_ms=None),
                      device="cuda", dtype="bfloat16")
    assert eng.runner.graphs, "the decode step runs from CUDA graphs"
    return eng


def prompts(engine, n: int) -> list[list[int]]:
    tok = engine.tokenizer
    return [tok.encode(f"Person number {i} as JSON: " + '{"name": "Ann", "age": 31} ' * (i % 3)) for i in range(n)]


def generate(engine, reqs) -> list[tuple[list[int], str]]:
    """reqs: (ids, params, options) each; greedy outputs in order."""
    out, reason = {i: [] for i in range(len(reqs))}, {}
    for i, (ids, params, opts) in enumerate(reqs):
        engine.add_request(f"gpu-struct-{id(reqs)}-{i}", ids, params, opts)
    while engine.has_unfinished():
        for o in engine.step():
            assert not o.error, o.error
            i = int(o.request_id.rsplit("-", 1)[1])
            out[i] += o.token_ids
            reason[i] = o.finish_reason
    return [(out[i], reason[i]) for i in range(len(reqs))]


def test_unconstrained_rows_are_unchanged_beside_grammared_rows_under_cuda_graphs(engine):
    ps = prompts(engine, 8)
    params = SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True)
    endless = RequestOptions(structured=StructuredOutput("json_schema", schema=ENDLESS))
    plain = generate(engine, [(p, params, RequestOptions()) for p in ps])
    mixed = generate(engine, [(p, params, endless if i % 2 else RequestOptions()) for i, p in enumerate(ps)])
    for i in range(0, 8, 2):
        assert mixed[i] == plain[i]
    for i in range(1, 8, 2):
        text = engine.tokenizer.decode(mixed[i][0])
        assert text.startswith('{"items": ["') and mixed[i][1] == "length"


@pytest.mark.parametrize("k", [0, 4])
def test_bf16_json_schema_outputs_validate_and_speculation_keeps_greedy_identical(engine, k):
    jsonschema = pytest.importorskip("jsonschema")
    ps = prompts(engine, 6)
    params = SamplingParams(temperature=0.0, max_tokens=64)
    so = StructuredOutput("json_schema", schema=PERSON)
    base = generate(engine, [(p, params, RequestOptions(structured=so)) for p in ps])
    spec = generate(engine, [(p, params, RequestOptions(structured=so, speculative=Speculation("prompt_lookup", k)))
                             for p in ps])
    assert spec == base
    for toks, reason in base:
        assert reason == "stop"
        jsonschema.validate(json.loads(engine.tokenizer.decode(toks)), PERSON)
