"""Low-rank adapters (LoRA) on a model's linear layers: train a small update, ship it apart, merge it at load.

`add_lora(model, rank, alpha, targets)` replaces each targeted `nn.Linear` (by attribute name: q_proj, k_proj,
v_proj, o_proj, gate_proj, up_proj, down_proj) with a `LoRALinear` that keeps the frozen base layer and adds
`(alpha / rank) * B(A(x))`, A (rank, in) small random, B (out, rank) zero, so the model starts out unchanged.
`merge_lora(model)` folds every update into its base weight and puts the plain `nn.Linear` back (inference runs
the merged model: no extra work per token). The names of the adapter tensors follow PEFT's layout
(`base_model.model.<module>.lora_A.weight`), so an adapter can be read by tools that know that format.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable rank-r update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1 (got {rank})")
        self.base = base
        self.rank, self.alpha = rank, float(alpha)
        self.scale = self.alpha / rank
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear's own init
        nn.init.zeros_(self.lora_B.weight)
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> Tensor:
        """The effective weight (base + update): what code that reads `.weight` of a linear layer expects."""
        return self.base.weight + self.delta()

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> Tensor:
        """(out, in): scale * B @ A, in the base weight's dtype."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scale).to(self.base.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scale


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Wrap every `nn.Linear` child whose attribute name is in `targets`; -> the wrapped modules' names.
    ValueError when a target names no layer of the model (a typo would otherwise train nothing)."""
    unknown = sorted(set(targets) - {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    if unknown:
        raise ValueError(f"LoRA targets {unknown} name no linear layer of the model; choose from {list(LORA_TARGETS)}")
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors under PEFT's names: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach()
    return out


def load_lora_state_dict(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy adapter tensors (as lora_state_dict names them) into the model's LoRALinear layers. ValueError when a
    layer has no tensors or a tensor no layer (an adapter made for another layout)."""
    mods = lora_modules(model)
    want = {f"{PEFT_PREFIX}{n}.lora_{ab}.weight" for n in mods for ab in "AB"}
    got = {k for k in tensors if ".lora_A." in k or ".lora_B." in k}
    if want != got:
        missing, extra = sorted(want - got)[:3], sorted(got - want)[:3]
        raise ValueError(f"the adapter does not fit this model's LoRA layers (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, m in mods.items():
            for ab, lin in (("A", m.lora_A), ("B", m.lora_B)):
                t = tensors[f"{PEFT_PREFIX}{name}.lora_{ab}.weight"]
                if t.shape != lin.weight.shape:
                    raise ValueError(f"adapter tensor {name}.lora_{ab} has shape {tuple(t.shape)}, the layer "
                                     f"{tuple(lin.weight.shape)}: it was made with another rank or model")
                lin.weight.copy_(t.to(lin.weight.dtype))


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight and put the plain nn.Linear back; -> layers merged."""
    n = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                child.base.weight.add_(child.delta())
                child.base.weight.requires_grad_(True)
                setattr(module, child_name, child.base)
                n += 1
    return n


@torch.no_grad()
def apply_lora_delta(model: nn.Module, tensors: dict[str, Tensor], alpha: float, rank: int) -> int:
    """Add an adapter's updates straight into a plain model's linear weights (no wrapping): W += alpha/rank B A.
    -> layers updated. ValueError when a tensor names a layer the model lacks."""
    modules = dict(model.named_modules())
    scale = float(alpha) / rank
    names = sorted({k[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0] for k in tensors if ".lora_A." in k})
    for name in names:
        lin = modules.get(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"the adapter updates {name!r}, which is not a linear layer of this model")
        a = tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"].float()
        b = tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"].float()
        lin.weight.add_((b @ a * scale).to(lin.weight.dtype))
    return len(names)
