"""Adapter folders: what `lighthouse train --lora-rank R` writes, and merging one over its base checkpoint.

An adapter folder holds
  adapter_config.json        PEFT's fields (peft_type, r, lora_alpha, target_modules, base_model_name_or_path)
                             plus a `lighthouse` block: the base's identity (its name and the SHA-256 of its
                             weights file) and the adapted model's whole config.json (its RoPE, positions and
                             `lighthouse` layers: what training changed besides the weights);
  adapter_model.safetensors  the LoRA tensors (PEFT names) and any other trained tensors in full (the norms),
                             under `base_model.model.<parameter name>`.
It is small (SmolLM2-135M at rank 32: ~20 MB in fp32) and useless without its base, which
`merge_adapter` checks by hash before writing a full checkpoint folder the engine loads like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lighthouse.model.lora import PEFT_PREFIX, apply_lora_delta, lora_modules, lora_state_dict

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# config fields that must be the base's: an adapter of a model of other sizes cannot apply
SIZE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


class AdapterError(ValueError):
    """An adapter that cannot be written or applied; the message says what to change."""


def is_adapter_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def weights_sha256(ckpt_dir: str | os.PathLike) -> str:
    """SHA-256 over the checkpoint's weight files (sorted by name): the identity an adapter records of its base."""
    files = sorted(Path(ckpt_dir).glob("*.safetensors"))
    if not files:
        raise AdapterError(f"{ckpt_dir} has no *.safetensors weights to identify")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def save_adapter(model, out_dir: str | os.PathLike, *, base_dir: str | os.PathLike, base_name: str | None = None,
                 extra_trained: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model`'s LoRA tensors (+ `extra_trained`: full tensors by parameter name, e.g. the norms) and its
    config as an adapter of the checkpoint in `base_dir`."""
    mods = lora_modules(model)
    if not mods:
        raise AdapterError("the model has no LoRA layers to save (train with --lora-rank R)")
    first = next(iter(mods.values()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in lora_state_dict(model).items()}
    for name, t in (extra_trained or {}).items():
        tensors[f"{PEFT_PREFIX}{name}"] = t.detach().to("cpu", dtype).contiguous()
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    targets = sorted({n.rsplit(".", 1)[-1] for n in mods})
    cfg = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.rank, "lora_alpha": first.alpha,
        "target_modules": targets, "bias": "none", "lora_dropout": 0.0,
        "base_model_name_or_path": base_name or str(base_dir),
        "modules_to_save": sorted(extra_trained or {}),
        "lighthouse": {
            "format": 1,
            "base": {"name": base_name, "weights_sha256": weights_sha256(base_dir)},
            "model_config": model.config.to_hf_dict(),
        },
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def read_adapter(adapter_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    p = Path(adapter_dir)
    if not (p / ADAPTER_CONFIG).is_file() or not (p / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{p} is not an adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    cfg = json.loads((p / ADAPTER_CONFIG).read_text())
    if cfg.get("peft_type") != "LORA" or "lighthouse" not in cfg:
        raise AdapterError(f"{p}/{ADAPTER_CONFIG} is not a Lighthouse LoRA adapter (peft_type LORA with a "
                           "`lighthouse` block, as `lighthouse train --lora-rank` writes)")
    return cfg, load_file(str(p / ADAPTER_WEIGHTS))


def load_saved_modules(model, cfg: dict, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy the adapter's fully trained tensors (`modules_to_save`: the norms) into `model`'s parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in cfg.get("modules_to_save", []):
            if name not in params:
                raise AdapterError(f"{where} carries {name!r}, which this model has no parameter for")
            params[name].copy_(tensors[f"{PEFT_PREFIX}{name}"].to(params[name].dtype))


def adapted_config(base_config: dict, adapter_cfg: dict) -> dict:
    """The adapted model's config.json (the adapter's, whole: its RoPE, positions and `lighthouse` layers);
    AdapterError when the adapter was made for a model of other sizes than `base_config`'s."""
    new = adapter_cfg["lighthouse"]["model_config"]
    for key in SIZE_FIELDS:
        if key in new and key in base_config and new[key] != base_config[key]:
            raise AdapterError(f"the adapter was made for a model with {key}={new[key]!r}; this base has "
                               f"{base_config[key]!r}")
    return dict(new)


def merge_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  dtype: torch.dtype = torch.bfloat16, check_base: bool = True) -> Path:
    """Write base + adapter as one checkpoint folder (written beside `out_dir`, then renamed into place)."""
    from lighthouse.checkpoint import load_checkpoint, save_checkpoint

    base, out = Path(base_dir), Path(out_dir)
    cfg, tensors = read_adapter(adapter_dir)
    want = cfg["lighthouse"]["base"].get("weights_sha256")
    if check_base and want:
        have = weights_sha256(base)
        if have != want:
            raise AdapterError(f"{base} is not the base this adapter was trained on (weights SHA-256 {have[:12]}..., "
                               f"the adapter's base {want[:12]}...); prepare that base, or pass --no-check-base")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    try:
        # the base's files with the adapted config.json, so the model is built with the adapter's RoPE and layers
        for f in base.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        base_config = json.loads((base / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps(adapted_config(base_config, cfg), indent=2) + "\n")
        model, tok = load_checkpoint(tmp, device="cpu", dtype=torch.float32)
        apply_lora_delta(model, {k: v for k, v in tensors.items() if ".lora_" in k}, cfg["lora_alpha"], cfg["r"])
        load_saved_modules(model, cfg, tensors, str(adapter_dir))
        gen = (base / "generation_config.json").read_text() if (base / "generation_config.json").exists() else None
        save_checkpoint(model, tok, tmp, dtype=dtype)
        if gen is not None:  # the base's stop ids and sampling defaults stay
            (tmp / "generation_config.json").write_text(gen)
        (tmp / "adapter_source.json").write_text(json.dumps(
            {"base": str(base), "adapter": str(adapter_dir), "adapter_config": cfg}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
