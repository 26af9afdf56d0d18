"""The decoder layer, defined once: every forward (training, the engine's prefill pieces, the decode step) runs
these modules and nothing else of its own.

Per layer: h -> RMSNorm -> q/k/v projections (+ q/k/v bias in Qwen2; per-head q/k RMSNorm in Qwen3) ->
[RoPE + attention: the caller's] -> o_proj (+h) -> RMSNorm -> SwiGLU MLP (+h).
`attention_input` is everything before RoPE, `add_output` everything after attention; `forward` runs both around
the caller's RoPE and attention. Parameter names match
transformers' Llama/Qwen2/Qwen3 modules, so checkpoints move both ways unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lighthouse.model.config import ModelConfig
from lighthouse.ops.fused import rms_norm, silu_mul

# (layer_idx, q (B, H, N, D), k, v (B, H_kv, N, D) before RoPE) -> (B, H, N, D): RoPE and attention, the caller's
LayerAttentionFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32, scale in the input dtype (HF's order; one fused kernel on CUDA inference)
        return rms_norm(x, self.weight, self.variance_epsilon)


def _set_fused(module: nn.Module, *linears: nn.Linear) -> None:
    """Keep a concatenated copy of the linears' weights (and biases) for inference: one GEMM instead of several.
    A plain attribute, not a parameter or buffer: checkpoints and state dicts never see it."""
    if _valid_fused(module) is not None:  # still valid: keep it (a captured CUDA graph may read it)
        return
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = torch.cat([m.bias.detach() for m in linears]) if linears[0].bias is not None else None
    params = [p for m in linears for p in m.parameters()]
    module.__dict__["_fused_weights"] = (weight, bias, params, [p._version for p in params])


def _fused(module: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    """The fused copy when it exists, no gradient is wanted (training always uses the parameters) and no
    parameter changed since it was made (an optimizer step or a load drops it)."""
    return None if torch.is_grad_enabled() else _valid_fused(module)


def _valid_fused(module: nn.Module) -> tuple[Tensor, Tensor | None] | None:
    fused = module.__dict__.get("_fused_weights")
    if fused is None:
        return None
    weight, bias, params, versions = fused
    if any(p._version != v for p, v in zip(params, versions)):
        del module.__dict__["_fused_weights"]
        return None
    return weight, bias


class LlamaMLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        fused = _fused(self)
        if fused is not None:  # one GEMM for gate and up, one kernel for silu(gate) * up (inference)
            return self.down_proj(silu_mul(F.linear(x, *fused)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse(self) -> None:
        _set_fused(self, self.gate_proj, self.up_proj)


class LlamaAttention(nn.Module):
    """The attention's projections (Llama, Qwen2's q/k/v biases, Qwen3's q/k norms); the attention itself is the
    caller's (an attention function or the engine's backend)."""

    def __init__(self, c: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv * self.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, c.rms_norm_eps)

    def fuse(self) -> None:
        _set_fused(self, self.q_proj, self.k_proj, self.v_proj)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, hidden) -> q (B, H, N, D), k and v (B, H_kv, N, D), before RoPE (transposed views of the
        token-major projections). One GEMM when fused, else three."""
        B, N, _ = x.shape
        fused = _fused(self)
        if fused is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
            q, k, v = F.linear(x, *fused).split([nq, nkv, nkv], dim=-1)
        q = q.view(B, N, self.n_heads, self.head_dim)
        k = k.view(B, N, self.n_kv, self.head_dim)
        if hasattr(self, "q_norm"):  # Qwen3: each head's q and k normalised over D, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        v = v.view(B, N, self.n_kv, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def output(self, out: Tensor) -> Tensor:
        """out (B, H, N, D) attention output -> (B, N, hidden) through o_proj."""
        B, _, N, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(c, layer_idx)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, h: Tensor, attend: LayerAttentionFn) -> Tensor:
        """The whole layer over h (B, N, hidden). Called as a module (wrappers such as FSDP and activation
        checkpointing hook its call); the engine's chunked forward calls the two halves below itself."""
        q, k, v = self.attention_input(h)
        return self.add_output(h, attend(self.self_attn.layer_idx, q, k, v))

    def attention_input(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, N, hidden) -> q, k, v before RoPE (see `LlamaAttention.project`)."""
        return self.self_attn.project(self.input_layernorm(h))

    def add_output(self, h: Tensor, out: Tensor, *, inplace: bool = False) -> Tensor:
        """h (B, N, hidden) of the positions whose attention output is out (B, H, N, D) -> h after o_proj's
        residual and the MLP's. inplace: add into h itself (inference: a 512K prompt's h is large)."""
        if inplace:
            h += self.self_attn.output(out)
            h += self.mlp(self.post_attention_layernorm(h))
            return h
        h = h + self.self_attn.output(out)
        return h + self.mlp(self.post_attention_layernorm(h))
