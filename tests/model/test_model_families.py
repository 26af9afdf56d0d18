"""Llama (tied embeddings, as SmolLM2), Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm) load from HF folders by
model_type and compute what transformers computes (CPU, fp32), densely and with Lighthouse layers on (the op's torch
reference in both), through the model's forward and through the engine's prefill (the model's chunked forward)."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from lighthouse.checkpoint import load_checkpoint, save_checkpoint
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import run_prefill
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LighthouseConfig
from lighthouse.model.layer_plan import layer_attention
from lighthouse.ops import causal_attention
from lighthouse.ops.lighthouse_ref import lighthouse_attention as lighthouse_ref

DIMS = dict(vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=50000.0)
FAMILIES = {
    "llama-tied": lambda: LlamaConfig(**DIMS, tie_word_embeddings=True),
    "qwen2": lambda: Qwen2Config(**DIMS, tie_word_embeddings=False, use_sliding_window=False),
    "qwen3": lambda: Qwen3Config(**DIMS, head_dim=32, tie_word_embeddings=True, use_sliding_window=False),
}
LIGHTHOUSE = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0], min_seq_len=512)
N = 600  # past the op's 512-token minimum, not a multiple of its length unit (the op pads)


def _hf_model(family: str):
    """A random transformers model of the family, every parameter (biases and q/k norms too) away from its init."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, DIMS["vocab_size"], (1, n), generator=torch.Generator().manual_seed(seed))


def _lighthouse_attention_for(lh_model_config):
    """A transformers attention function: the Lighthouse reference op in the layers our rule says run it."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        # query (B, H, N, D), key/value (B, H_kv, N, D), after RoPE
        if layer_attention(lh_model_config, module.layer_idx, query.shape[2]).lighthouse:
            lh = lh_model_config.lighthouse
            out = lighthouse_ref(query, key, value, levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk,
                                 scorer=lh.scorer)
        else:
            out = causal_attention(query, key, value)
        return out.transpose(1, 2).contiguous(), None

    return attend


def _assert_close(ours: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    diff = (ours - want).abs()
    assert diff.max().item() < atol, f"{what}: max |diff| {diff.max().item():.2e}, mean {diff.mean().item():.2e}"


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(family, transformers model, ours loaded from its saved folder)."""
    hf = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    ours, _ = load_checkpoint(folder, load_tokenizer=False)
    return request.param, hf, ours


def test_an_hf_folder_loads_by_model_type_with_the_same_logits(pair):
    family, hf, ours = pair
    assert ours.config.model_type == hf.config.model_type
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, DIMS["vocab_size"], (2, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _assert_close(ours(ids, logits_to_keep=96).logits, hf(ids).logits, family)


def test_our_save_loads_in_transformers_as_the_same_family(pair, tmp_path):
    family, hf, ours = pair
    save_checkpoint(ours, None, tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(hf)
    ids = _ids(64)
    with torch.no_grad():
        _assert_close(again(ids).logits, hf(ids).logits, family)


def test_lighthouse_layers_match_transformers_with_the_reference_op(pair, monkeypatch):
    family, hf, ours = pair
    monkeypatch.setenv("LIGHTHOUSE_ATTENTION_BACKEND", "torch")
    ours.config.lighthouse = LighthouseConfig(**LIGHTHOUSE.to_dict())
    name = f"lighthouse_ref_{family}"
    AttentionInterface.register(name, _lighthouse_attention_for(ours.config))
    hf.set_attn_implementation(name)
    try:
        ids = _ids(N)
        with torch.no_grad():
            want = hf(ids).logits[0]
            dense = ours(ids, dense=True, logits_to_keep=N).logits[0]
            sparse = ours(ids, logits_to_keep=N).logits[0]
        _assert_close(sparse, want, f"{family} with Lighthouse layers", atol=2e-5)
        assert not torch.allclose(sparse, dense, atol=1e-3)  # the op ran

        # the engine's prefill (the model's chunked forward, token chunks of 128) gives the same last logits
        eng = LLMEngine(ours, None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, max_prefill_chunk_ms=None))
        for mode, expect in (("sparse", want[-1]), ("dense", dense[-1])):
            req = eng.make_request(f"{family}-{mode}", ids[0].tolist(), SamplingParams(max_tokens=1),
                                   RequestOptions(mode, "dense", 0, cache_prompt=False))
            assert req.plan.sparse == (mode == "sparse")
            kv = eng.kv.allocate(req.reservation)
            logits = run_prefill(ours, eng.kv.pool, kv, ids[0], req.plan, chunk_tokens=128)
            eng.kv.free(kv)
            _assert_close(logits, expect, f"{family} engine prefill ({mode})", atol=2e-5)
    finally:
        hf.set_attn_implementation("eager")
        ours.config.lighthouse = LighthouseConfig(enabled=False)
