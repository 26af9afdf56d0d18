"""`lighthouse.engine.memory` counts what the engine counts: the max_model_len a KV budget gives, what admission
reserves for a compact request, the longest prompt admitted; and the engine's startup hint when the budget, not
the checkpoint, caps max_model_len."""

from __future__ import annotations

import logging

import pytest
import torch

from lighthouse.engine import memory
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.presets import model_preset

MiB = 1 << 20


def _model(lighthouse: bool = True, layers: int = 4, kv_heads: int = 2) -> LlamaForCausalLM:
    """tiny (4 heads, D 16; GQA 4/2 by default), first and last layer dense, the others Lighthouse (L2 p4 k128 from
    512 tokens); fp32; 16,384 positions. Without `lighthouse`: no Lighthouse layers."""
    cfg = model_preset("tiny")
    cfg.num_hidden_layers, cfg.num_key_value_heads = layers, kv_heads
    cfg.lighthouse = (LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0, layers - 1],
                                       min_seq_len=512) if lighthouse else LighthouseConfig(enabled=False))
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return _model()


def _engine(model, **config) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(**{"enable_prefix_caching": False, "max_prefill_chunk_ms": None,
                                                  **config}))


def _request(eng: LLMEngine, n: int, max_tokens: int = 1):
    ids = torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    return eng.make_request(f"r{n}", ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))


@pytest.mark.parametrize("kv_mode", ["full", "compact"])
@pytest.mark.parametrize("budget, block_size, kv_cache_dtype", [
    (4 * MiB, 16, "auto"), (3 * MiB + 12345, 128, "auto"), (4 * MiB, 32, "fp8_e4m3"), (64 * MiB, 128, "auto")])
def test_max_model_len_is_what_the_engine_reports(model, kv_mode, budget, block_size, kv_cache_dtype):
    eng = _engine(model, kv_cache_bytes=budget, block_size=block_size, kv_cache_dtype=kv_cache_dtype, kv_mode=kv_mode)
    dtype_bytes = 1 if kv_cache_dtype == "fp8_e4m3" else 4
    predicted = memory.max_model_len(model.config, budget, kv_mode=kv_mode, dtype_bytes=dtype_bytes,
                                     block_size=block_size)
    assert eng.max_model_len == predicted
    if budget == 64 * MiB:
        assert predicted == model.config.max_position_embeddings  # the checkpoint's positions cap it


def test_the_cpu_default_budget_caps_the_bundled_checkpoint_at_349440():
    from lighthouse.checkpoint import default_checkpoint_dir, load_config

    config = load_config(default_checkpoint_dir())
    assert memory.max_model_len(config, memory.CPU_BUDGET_BYTES, dtype_bytes=4) == 349440
    assert memory.kv_bytes_per_token(config, kv_mode="full", dtype_bytes=4) == 6 * 2 * 2 * 64 * 4


def test_the_longest_full_prompt_is_admitted_and_one_token_more_is_refused(model):
    eng = _engine(model, kv_cache_bytes=4 * MiB, block_size=16)
    n = memory.longest_prompt(model.config, 4 * MiB, dtype_bytes=4, block_size=16)
    assert n == eng.max_model_len - 1
    _request(eng, n)
    with pytest.raises(InvalidRequest, match="maximum context length"):
        _request(eng, n + 1)


@pytest.mark.parametrize("n, max_tokens", [(600, 1), (1100, 7), (2500, 1), (3001, 40)])
def test_the_compact_reservation_is_the_one_admission_makes(model, n, max_tokens):
    eng = _engine(model, kv_cache_bytes=4 * MiB, block_size=16, kv_mode="compact")
    req = _request(eng, n, max_tokens)
    assert req.plan.compact
    res = memory.reservation(model.config, n, kv_mode="compact", max_tokens=max_tokens)
    assert res == req.reservation
    shape = memory.cache_shape(model.config, 4, 16)
    assert res.blocks(shape) == eng.admission.blocks_needed(req, None)


@pytest.mark.parametrize("n", [600, 2500])
def test_compact_bytes_per_token_are_what_admission_reserves_per_prompt_token(model, n):
    """Before block rounding: the full-attention layers' positions, the Lighthouse layers' context (r slots an
    entry) and the prefill's one-layer scratch, over the prompt; the reserved blocks exceed it by less than one
    block per table, plus the completion token."""
    eng = _engine(model, kv_cache_bytes=4 * MiB, block_size=16, kv_mode="compact")
    req = _request(eng, n)
    shape, res = eng.kv.shape, req.reservation
    per_token = memory.kv_bytes_per_token(model.config, kv_mode="compact", dtype_bytes=4, prompt_len=n)
    slots = (len(res.full_layers) * res.capacity + len(res.ctx_layers) * res.ctx_entries * shape.group
             + res.scratch_positions)
    completion = len(res.full_layers) + len(res.ctx_layers) * shape.group  # one token more in each table
    assert per_token * n == pytest.approx((slots - completion) * shape.bytes_per_layer_token)
    tables = len(res.full_layers) + len(res.ctx_layers) + 1
    reserved = res.blocks(shape) * shape.bytes_per_block
    assert 0 <= reserved - per_token * n < (tables + 1) * shape.bytes_per_block
    held = memory.kv_bytes_per_token(model.config, kv_mode="compact", dtype_bytes=4, prompt_len=n, held=True)
    assert (per_token - held) * n == pytest.approx(n * shape.bytes_per_layer_token)  # the scratch


@pytest.mark.parametrize("budget", [4 * MiB, 3 * MiB + 777])
def test_the_longest_compact_prompt_is_admitted_and_one_token_more_is_refused(model, budget):
    eng = _engine(model, kv_cache_bytes=budget, block_size=16, kv_mode="compact")
    n = memory.longest_prompt(model.config, budget, kv_mode="compact", dtype_bytes=4, block_size=16)
    assert 576 < n < eng.max_model_len - 1  # compact (past the op's 512 + the 64-token tail), below the upper bound
    assert _request(eng, n).plan.compact
    with pytest.raises(InvalidRequest) as refused:
        _request(eng, n + 1)
    assert refused.value.code == "kv_cache_exceeded"


def test_kv_budget_for_is_the_smallest_budget_that_admits_the_prompt(model):
    for kv_mode in ("full", "compact"):
        need = memory.kv_budget_for(model.config, 3000, kv_mode=kv_mode, dtype_bytes=4, block_size=16)
        block = memory.cache_shape(model.config, 4, 16).bytes_per_block
        assert memory.longest_prompt(model.config, need, kv_mode=kv_mode, dtype_bytes=4, block_size=16) >= 3000
        assert memory.longest_prompt(model.config, need - block, kv_mode=kv_mode, dtype_bytes=4, block_size=16) < 3000


def _hint(caplog, model, **config) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="lighthouse.engine.engine"):
        caplog.clear()
        eng = _engine(model, **config)
    return eng, [r.getMessage() for r in caplog.records if "positions" in r.getMessage()]


def test_a_budget_below_the_checkpoints_positions_says_what_to_change(caplog):
    """6 layers, 4 of them Lighthouse, no GQA: a compact session holds more than a full one in the same budget
    (with GQA 4/2 and 2 of 4 layers, the context and the prefill's scratch cost as much as the full caches)."""
    model = _model(layers=6, kv_heads=4)
    eng, warnings = _hint(caplog, model, kv_cache_bytes=4 * MiB, block_size=16)
    assert len(warnings) == 1, warnings
    text = warnings[0]
    positions = model.config.max_position_embeddings
    assert f"max_model_len {eng.max_model_len} is below the checkpoint's {positions} positions" in text
    assert f"{eng.kv.shape.bytes_per_token:,} bytes per token" in text
    gb = float(text.split("--kv-cache-gb ")[1].split()[0].rstrip(","))
    compact = int(text.split("prompts of up to ")[-1].split()[0])
    assert "--kv-mode compact" in text
    assert compact == memory.longest_prompt(model.config, 4 * MiB, kv_mode="compact", dtype_bytes=4, block_size=16)
    bigger, warnings = _hint(caplog, model, kv_cache_bytes=int(gb * 2**30), block_size=16)
    assert bigger.max_model_len == positions and warnings == []  # the suggested budget serves every position


def test_no_hint_when_the_positions_or_max_model_len_set_the_cap(model, caplog):
    assert _hint(caplog, model, kv_cache_bytes=64 * MiB)[1] == []
    assert _hint(caplog, model, kv_cache_bytes=4 * MiB, block_size=16, max_model_len=2048)[1] == []


def test_a_checkpoint_without_lighthouse_layers_is_not_told_to_go_compact(caplog):
    _, warnings = _hint(caplog, _model(lighthouse=False), kv_cache_bytes=4 * MiB, block_size=16)
    assert len(warnings) == 1 and "--kv-cache-gb" in warnings[0] and "compact" not in warnings[0]


def test_the_docs_table_has_a_row_per_layout_and_host():
    models = memory.table_models()
    table = memory.markdown_table(models)
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 5 + 3  # bundled: full fp32/bf16/fp8, compact fp32/bf16; SmolLM2 (no Lighthouse): full
    assert rows[0].startswith("| bundled checkpoint | full, fp32 | 6,144 | 349,439 |")
    assert all(row.count("|") == 7 for row in rows)
    assert "23,040" in table  # SmolLM2: 30 layers x 2 x 3 KV heads x 64 x 2 bytes
