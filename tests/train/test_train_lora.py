"""`lighthouse train --init-from HF_DIR --lora-rank R`: the base stays frozen, checkpoints and the output are small
adapter folders, a run resumes exactly from one, and `lighthouse adapter merge` writes a checkpoint whose logits
are the adapted model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lighthouse.adapter import AdapterError, is_adapter_dir, merge_adapter, read_adapter
from lighthouse.checkpoint import load_checkpoint
from lighthouse.cli import main as lighthouse_main
from lighthouse.model.config import ModelConfig
from lighthouse.ops.rope import lighthouse_inv_freq, rope_inv_freq
from lighthouse.model.lora import LoRALinear, add_lora, load_lora_state_dict, merge_lora
from tests.train.test_train_init_from import TRAIN_ARGS, _make_hf_llama

LORA_ARGS = ["--lora-rank", "4", "--data", "none", "--lighthouse-rope", "after_select", "--max-position-embeddings",
             "4096"]


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory) -> Path:
    return _make_hf_llama(tmp_path_factory.mktemp("hf") / "llama")


def _train(hf_llama: Path, out: Path, *extra: str) -> int:
    return lighthouse_main(["train", "--init-from", str(hf_llama), "--out", str(out), *LORA_ARGS, *TRAIN_ARGS, *extra])


@pytest.fixture(scope="module")
def trained(hf_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    assert _train(hf_llama, out, "--save-every", "2") == 0
    return out


def test_lora_layer_starts_as_its_base_and_merges_to_the_same_function():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    want = base(x)
    holder = torch.nn.Module()
    holder.q_proj = base  # a targeted name
    add_lora(holder, rank=2, alpha=4.0, targets=("q_proj",))
    lora = holder.q_proj
    assert isinstance(lora, LoRALinear)
    torch.testing.assert_close(lora(x), want)  # B starts at zero
    with torch.no_grad():
        lora.lora_B.weight.normal_()
    adapted = lora(x)
    assert not torch.allclose(adapted, want)
    merge_lora(holder)
    assert isinstance(holder.q_proj, torch.nn.Linear)
    torch.testing.assert_close(holder.q_proj(x), adapted, rtol=1e-5, atol=1e-5)


def test_unknown_target_is_refused():
    with pytest.raises(ValueError, match="name no linear layer"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), 2, 4.0, targets=("qproj",))


def test_lora_run_writes_a_small_adapter_and_leaves_the_base_alone(trained, hf_llama):
    assert is_adapter_dir(trained)
    cfg, tensors = read_adapter(trained)
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"])
    mc = cfg["lighthouse"]["model_config"]
    assert mc["max_position_embeddings"] == 4096 and mc["lighthouse"]["rope"] == "after_select"
    assert mc["rope_scaling"]["factor"] > 8.0  # the llama3 scaling grew with the positions
    lora_b = [t for k, t in tensors.items() if k.endswith("lora_B.weight")]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # it trained
    assert "model.norm.weight" in cfg["modules_to_save"]
    base_bytes = sum(f.stat().st_size for f in hf_llama.glob("*.safetensors"))
    assert (trained / "adapter_model.safetensors").stat().st_size < base_bytes / 3
    step = sorted((trained / "checkpoints").iterdir())[-1]
    assert is_adapter_dir(step) and not (step / "model.safetensors").exists()  # resumable from the adapter alone


def test_merged_checkpoint_equals_the_adapted_model(trained, hf_llama, tmp_path):
    merged = merge_adapter(hf_llama, trained, tmp_path / "merged", dtype=torch.float32)
    cfg, tensors = read_adapter(trained)
    model, _ = load_checkpoint(merged, dtype=torch.float32)
    # the adapted model built by hand: the base, its config from the adapter, the LoRA layers and norms loaded
    ref, _ = load_checkpoint(hf_llama, dtype=torch.float32)
    assert json.loads((merged / "config.json").read_text())["max_position_embeddings"] == 4096
    ref.config = ModelConfig.from_hf_dict(cfg["lighthouse"]["model_config"])  # the RoPE it was trained with
    ref.inv_freq, ref.lighthouse_inv_freq = rope_inv_freq(ref.config), lighthouse_inv_freq(ref.config)
    add_lora(ref, cfg["r"], cfg["lora_alpha"], tuple(cfg["target_modules"]))
    load_lora_state_dict(ref, tensors)
    with torch.no_grad():
        for name in cfg["modules_to_save"]:
            dict(ref.named_parameters())[name].copy_(tensors[f"base_model.model.{name}"])
    ids = torch.randint(3, 300, (1, 64))
    torch.testing.assert_close(model(ids, dense=True, logits_to_keep=64).logits,
                               ref(ids, dense=True, logits_to_keep=64).logits, rtol=1e-4, atol=1e-4)
    base, _ = load_checkpoint(hf_llama, dtype=torch.float32)
    diff = (model(ids, dense=True, logits_to_keep=64).logits - base(ids, dense=True, logits_to_keep=64).logits).abs()
    assert diff.max() > 1e-3  # the adapter changed the model


def test_merge_refuses_another_base(trained, tmp_path):
    other = _make_hf_llama(tmp_path / "other", seed=1)
    with pytest.raises(AdapterError, match="not the base this adapter was trained on"):
        merge_adapter(other, trained, tmp_path / "merged")


def test_adapter_merge_command(trained, hf_llama, tmp_path, capsys):
    assert lighthouse_main(["adapter", "merge", str(hf_llama), str(trained), "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "config.json").exists()
    assert str(tmp_path / "m") in capsys.readouterr().out
    assert lighthouse_main(["adapter", "merge", str(tmp_path / "m"), str(trained), "--out", str(tmp_path / "x")]) == 2
    assert "not the base" in capsys.readouterr().err


def test_lora_run_resumes_exactly(hf_llama, trained, tmp_path):
    out = tmp_path / "run"
    assert _train(hf_llama, out, "--save-every", "2", "--stop-at-step", "3") == 0
    assert _train(hf_llama, out, "--save-every", "2") == 0
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(trained / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_lora_needs_init_from(tmp_path, capsys):
    assert lighthouse_main(["train", "--lora-rank", "4", "--out", str(tmp_path / "x"), "--device", "cpu"]) == 2
    assert "--init-from" in capsys.readouterr().err


def test_a_stage_starts_from_the_previous_stages_adapter(hf_llama, trained, tmp_path):
    out = tmp_path / "stage2"
    assert _train(hf_llama, out, "--init-adapter", str(trained), "--max-steps", "1", "--dense-tail-steps", "0",
                  "--lr", "1e-12") == 0  # one step of a negligible LR: the adapter it starts from comes out
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(trained / "adapter_model.safetensors"))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6)


def test_init_adapter_of_another_rank_is_refused(hf_llama, trained, tmp_path, capsys):
    rc = _train(hf_llama, tmp_path / "x", "--init-adapter", str(trained), "--lora-rank", "8")
    assert rc == 2 and "another rank" in capsys.readouterr().err
