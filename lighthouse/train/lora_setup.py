"""Training a LoRA adapter instead of every weight (`lighthouse train --init-from DIR --lora-rank R`).

The base weights are frozen; the LoRA layers (lighthouse.model.lora) and, with `lora_train_norms`, the RMSNorm
weights train. Checkpoints and the final output are adapter folders (lighthouse.adapter), small enough to carry
between machines and to ship.
"""

from __future__ import annotations

from torch import nn

from lighthouse.adapter import AdapterError, load_saved_modules, read_adapter
from lighthouse.model.lora import add_lora, has_lora, load_lora_state_dict


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The RMSNorm weights by name (input/post-attention norms of every layer and the final norm)."""
    return {n: p for n, p in model.named_parameters() if n.endswith("norm.weight")}


def setup_lora(model: nn.Module, cfg) -> str:
    """Wrap the targeted linears, freeze everything else (but the norms with lora_train_norms); -> a log line."""
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_rank
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = add_lora(model, cfg.lora_rank, alpha, tuple(cfg.lora_targets))
    if cfg.lora_train_norms:
        for p in norm_parameters(model).values():
            p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"LoRA rank {cfg.lora_rank} alpha {alpha:g} on {len(wrapped)} layers ({', '.join(cfg.lora_targets)})"
            f"{' + norms' if cfg.lora_train_norms else ''}: {trainable:,} trainable of {total:,} parameters")


def trained_extras(model: nn.Module) -> dict:
    """The trained tensors that are not LoRA layers (the norms when they train), by parameter name."""
    if not has_lora(model):
        return {}
    return {n: p for n, p in norm_parameters(model).items() if p.requires_grad}


def load_adapter_weights(model: nn.Module, adapter_dir) -> None:
    """An adapter folder's LoRA tensors and trained norms into `model`'s LoRA layers (resuming a run, or starting
    a stage from the previous stage's adapter). AdapterError when it does not fit (another rank or model)."""
    cfg, tensors = read_adapter(adapter_dir)
    try:
        load_lora_state_dict(model, tensors)
    except ValueError as exc:
        raise AdapterError(f"{adapter_dir}: {exc}") from None
    load_saved_modules(model, cfg, tensors, str(adapter_dir))
