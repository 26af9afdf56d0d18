"""Checkpoint directories: safetensors only, clear errors naming the tensor, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

import lighthouse.checkpoint as ckpt_mod
from lighthouse.checkpoint import CheckpointError, default_checkpoint_dir, load_checkpoint, save_checkpoint
from lighthouse.model import LlamaForCausalLM, model_preset


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    save_checkpoint(model, None, tmp_path)
    return model, tmp_path


def test_checkpoint_directory_has_the_hf_files_and_lighthouse_block(saved):
    model, d = saved
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temp files left behind
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert set(cfg["lighthouse"]) >= {"levels", "pooling_factor", "topk", "scorer", "full_attn_layers", "min_seq_len"}
    assert "model.layers.0.self_attn.q_proj.weight" in load_file(d / "model.safetensors")
    assert AutoTokenizer.from_pretrained(d).chat_template


def test_round_trip_restores_identical_weights_and_config(saved):
    model, d = saved
    loaded, tok = load_checkpoint(d)
    assert loaded.config == model.config
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    assert tok.decode(tok("pass key 123")["input_ids"], skip_special_tokens=True) == "pass key 123"


def test_bf16_load_gives_bf16_model(saved):
    _, d = saved
    model, _ = load_checkpoint(d, dtype=torch.bfloat16, load_tokenizer=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_weights_are_refused_with_a_clear_error(tmp_path, saved, name):
    _, d = saved
    (d / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (d / name).write_bytes(b"not even looked at")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(d)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(d / name)


def test_truncated_safetensors_names_the_first_missing_tensor(saved):
    _, d = saved
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"truncated: tensor '[\w.]+'"):
        load_checkpoint(d)


def test_missing_and_misshaped_tensors_are_named(saved):
    _, d = saved
    path = d / "model.safetensors"
    state = load_file(path)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        load_checkpoint(d)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.up_proj.weight'.*shape \(3, 3\)"):
        load_checkpoint(d)


def test_a_save_that_crashes_leaves_the_previous_weights_intact(saved, monkeypatch):
    model, d = saved
    before = (d / "model.safetensors").read_bytes()

    def crash(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, None, d)
    assert (d / "model.safetensors").read_bytes() == before
    assert not [p for p in d.iterdir() if p.name.startswith(".")]


def test_missing_directory_and_missing_weights_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)


def test_bundled_default_checkpoint_loads_and_is_small():
    d = default_checkpoint_dir()
    model, tok = load_checkpoint(d)
    assert (d / "model.safetensors").stat().st_size < 50 * 2**20
    assert model.config.max_position_embeddings >= 524288 and tok.model_max_length == model.config.max_position_embeddings
    assert model.config.lighthouse.enabled
    # the chat layout it was trained on (not the fallback "role: content" template)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" \
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_sharded_transformers_checkpoint_loads(tmp_path):
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HFLlama

    torch.manual_seed(0)
    hf = HFLlama(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1)).eval()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    ours, tok = load_checkpoint(tmp_path)
    assert tok is None  # no tokenizer.json in that directory
    ids = torch.randint(0, 128, (1, 32))
    with torch.no_grad():
        err = (ours(ids, logits_to_keep=32).logits - hf(ids).logits).abs().max().item()
    assert err < 1e-4


def test_saved_files_are_readable_by_other_users(saved):
    _, d = saved
    mask = os.umask(0)
    os.umask(mask)
    for p in d.iterdir():
        assert p.stat().st_mode & 0o444 & ~mask == 0o444 & ~mask, p.name


def test_a_saved_tokenizer_keeps_its_chat_template_in_tokenizer_config(tmp_path):
    """transformers 5 saves the chat template to chat_template.jinja alone; a copy of the usual files (config,
    weights, tokenizer.json, tokenizer_config.json) must still carry it, or documents.ask prompts change layout."""
    from lighthouse.tokenizer import FALLBACK_CHAT_TEMPLATE, load_tokenizer

    model, tok = load_checkpoint(default_checkpoint_dir())
    save_checkpoint(model, tok, tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    again = load_tokenizer(tmp_path)
    assert again.chat_template == tok.chat_template != FALLBACK_CHAT_TEMPLATE
