"""The model matches transformers' LlamaForCausalLM and follows the checkpoint's per-layer attention rule."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers import LlamaForCausalLM as HFLlama

import lighthouse.model.llama as llama_mod
from lighthouse.checkpoint import load_checkpoint, save_checkpoint
from lighthouse.engine.llm import greedy_generate
from lighthouse.model import LighthouseConfig, LlamaForCausalLM, ModelConfig, model_preset

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 128}


def _hf_greedy(hf, ids, n):
    out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:]


def _assert_parity(ours, hf, vocab):
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (2, 96))
    with torch.no_grad():
        a = ours(ids, dense=True, logits_to_keep=ids.shape[1]).logits
        b = hf(ids).logits
    err = (a - b).abs().max().item()
    assert err < 1e-4, f"max |logits diff| {err:.2e}"
    prompt = ids[:1, :24]
    assert torch.equal(greedy_generate(ours, prompt, 32), _hf_greedy(hf, prompt, 32))


@pytest.mark.parametrize("tied,rope_scaling", [(False, None), (True, LLAMA3_ROPE)])
def test_our_checkpoint_loads_in_transformers_with_same_logits_and_greedy_tokens(tmp_path, tied, rope_scaling):
    torch.manual_seed(0)
    cfg = model_preset("tiny")
    cfg.tie_word_embeddings, cfg.rope_scaling = tied, dict(rope_scaling) if rope_scaling else None
    ours = LlamaForCausalLM(cfg).eval()
    save_checkpoint(ours, None, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.num_key_value_heads < hf.config.num_attention_heads  # GQA exercised
    _assert_parity(ours, hf, cfg.vocab_size)


def test_transformers_saved_gqa_checkpoint_loads_into_ours_with_same_logits(tmp_path):
    torch.manual_seed(0)
    hf_cfg = LlamaConfig(vocab_size=300, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=50000.0, rms_norm_eps=1e-6, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=False)
    hf = HFLlama(hf_cfg).eval()
    hf.save_pretrained(tmp_path)
    ours, _ = load_checkpoint(tmp_path, load_tokenizer=False)
    assert not ours.config.lighthouse.enabled  # a plain HF checkpoint runs dense everywhere
    assert ours.config.rope_type == "llama3" and ours.config.num_key_value_heads == 2
    _assert_parity(ours, hf, 300)


def test_loss_matches_transformers_shifted_cross_entropy(tmp_path):
    torch.manual_seed(0)
    ours = LlamaForCausalLM(model_preset("tiny")).eval()
    save_checkpoint(ours, None, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 262, (2, 64))
    labels = ids.clone()
    labels[:, :10] = -100
    with torch.no_grad():
        ours_loss = ours(ids, labels=labels, dense=True).loss
        hf_loss = hf(ids, labels=labels).loss
    assert abs(ours_loss.item() - hf_loss.item()) < 1e-5


def _count_op_calls(monkeypatch):
    calls = []
    real = llama_mod.lighthouse_attention

    def spy(q, k, v, **kw):
        calls.append(q.shape[2])
        return real(q, k, v, **kw)

    monkeypatch.setattr(llama_mod, "lighthouse_attention", spy)
    return calls


def test_lighthouse_runs_only_in_non_full_layers_and_at_or_above_min_seq_len(monkeypatch):
    cfg = model_preset("tiny")
    cfg.num_hidden_layers = 3
    cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[1], min_seq_len=600)
    model = LlamaForCausalLM(cfg).eval()
    assert [model.layer_uses_lighthouse(i, 600) for i in range(3)] == [True, False, True]
    assert not any(model.layer_uses_lighthouse(i, 599) for i in range(3))
    calls = _count_op_calls(monkeypatch)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 599)))
        assert calls == []
        model(torch.randint(0, 256, (1, 640)))
        assert calls == [640, 640]  # layers 0 and 2
        model(torch.randint(0, 256, (1, 640)), dense=True)
        assert calls == [640, 640]  # dense=True: no Lighthouse layer


def test_lighthouse_layers_change_the_output_and_dense_switch_restores_dense_attention():
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    ids = torch.randint(0, 256, (1, 1024))
    with torch.no_grad():
        sparse = model(ids, logits_to_keep=1024).logits
        dense = model(ids, dense=True, logits_to_keep=1024).logits
        disabled = LlamaForCausalLM(model.config)
        disabled.load_state_dict(model.state_dict())
        disabled.config.lighthouse.enabled = False
        plain = disabled.eval()(ids, logits_to_keep=1024).logits
    assert (sparse - dense).abs().max() > 1e-3  # the op really ran
    assert torch.equal(dense, plain)


def test_attention_callback_sees_every_layer_with_post_rope_gqa_shapes():
    cfg = model_preset("tiny")
    model = LlamaForCausalLM(cfg).eval()
    seen = []

    def attn(i, q, k, v):
        seen.append((i, tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        return llama_mod.causal_attention(q, k, v)

    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        a = model(ids, attention=attn, logits_to_keep=16).logits
        b = model(ids, dense=True, logits_to_keep=16).logits
    H, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert seen == [(i, (2, H, 16, D), (2, Hkv, 16, D), (2, Hkv, 16, D)) for i in range(cfg.num_hidden_layers)]
    assert torch.equal(a, b)


def test_logits_to_keep_returns_only_the_last_positions():
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        full = model(ids, logits_to_keep=40).logits
        last = model(ids, logits_to_keep=3).logits
    assert last.shape == (1, 3, model.config.vocab_size)
    torch.testing.assert_close(last, full[:, -3:], rtol=0, atol=1e-5)


def test_sparse_prefill_is_refused_when_no_layer_is_lighthouse_and_the_default_is_dense():
    """No silent substitution: asking a sparse prefill of a model without Lighthouse layers is an error naming
    `prefill` (it used to run densely and say nothing); left to the default, it prefills densely."""
    from lighthouse.engine.errors import InvalidRequest

    torch.manual_seed(0)
    cfg = model_preset("tiny")
    cfg.lighthouse.enabled = False
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, 700))
    with pytest.raises(InvalidRequest, match="no Lighthouse layers") as info:
        greedy_generate(model, ids, 8, prefill="sparse", dense_tail_tokens=32)
    assert info.value.param == "prefill"
    assert torch.equal(greedy_generate(model, ids, 8, dense_tail_tokens=32), greedy_generate(model, ids, 8, prefill="dense"))


def test_config_round_trips_through_hf_dict_and_rejects_bad_values():
    cfg = model_preset("default")
    cfg.rope_scaling = dict(LLAMA3_ROPE)
    again = ModelConfig.from_hf_dict(cfg.to_hf_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="num_key_value_heads"):
        ModelConfig(num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="full_attn_layers"):
        ModelConfig(num_hidden_layers=2, lighthouse=LighthouseConfig(full_attn_layers=[5]))
    with pytest.raises(ValueError, match="rope_scaling type"):
        ModelConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})


def test_fused_projections_change_no_logit_and_never_train():
    from lighthouse.model.presets import model_preset

    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    ids = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        before = model(ids).logits
        model.fuse_projections()
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-6)
    out = model(ids, labels=ids)  # with gradients: the parameters, not the inference copies
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    assert model.model.layers[0].mlp.gate_proj.weight.grad is not None
    assert "_fused_weights" not in "".join(model.state_dict())


def test_fused_projections_are_dropped_when_a_weight_changes():
    from lighthouse.model.presets import model_preset

    torch.manual_seed(1)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    ids = torch.randint(0, 300, (1, 20))
    model.fuse_projections()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2.0)  # as an optimizer step does: in place
        model.model.layers[1].self_attn.k_proj.weight.add_(0.1)
        fused = model(ids).logits
    for layer in model.model.layers:  # the plain parameters everywhere
        layer.mlp.__dict__.pop("_fused_weights", None)
        layer.self_attn.__dict__.pop("_fused_weights", None)
    with torch.no_grad():
        plain = model(ids).logits
    assert torch.allclose(fused, plain, atol=1e-6)


def test_fusing_twice_keeps_the_first_copies():
    """Two engines on one model: the second must not replace tensors a captured CUDA graph of the first reads."""
    from lighthouse.model.presets import model_preset

    model = LlamaForCausalLM(model_preset("tiny")).eval()
    model.fuse_projections()
    first = [layer.mlp.__dict__["_fused_weights"][0] for layer in model.model.layers]
    model.fuse_projections()
    assert all(a is layer.mlp.__dict__["_fused_weights"][0] for a, layer in zip(first, model.model.layers))
