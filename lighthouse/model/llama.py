"""The causal LM (Llama, Qwen2, Qwen3: `ModelConfig.model_type`) whose layers run Lighthouse or dense attention.

Parameter names match transformers' `LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` exactly, so
checkpoints move both ways unchanged. The layer is defined once (layers.py); this module runs it over a whole
batch (`forward`: training, evaluation, the engine's decode step); chunked.py runs the same layers in token
chunks, resumably (the engine's prefill).

Which attention a layer runs (when no `attention` callback is passed) is `layer_plan.layer_attention`:
  Lighthouse  if not `dense`, Lighthouse is enabled in the config, the layer is not in `full_attn_layers`,
              and N >= max(min_seq_len, the op's own minimum);
  dense causal otherwise.
The `attention(layer_idx, q, k, v)` callback overrides this: it is the seam the inference engine uses to
write its KV cache and pick sparse/dense per layer. It receives q/k after RoPE, unless it is an
`UnrotatedAttention`: then it receives them before RoPE, with the pass's `Rotary` (cos/sin, positions,
inv_freq) to rotate what it needs. The model's own attention is one for checkpoints with
`lighthouse.rope == "after_select"`: its Lighthouse layers hand un-rotated q/k to the op, which rotates the
entries it selected with the model's `lighthouse_inv_freq` (lighthouse.rope_freqs: the model's frequencies or
rope_theta's unscaled ones; see LighthouseConfig); dense layers and dense attention rotate as usual.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lighthouse.model.config import ModelConfig
from lighthouse.model.layer_plan import layer_attention
from lighthouse.model.layers import LlamaDecoderLayer, RMSNorm
from lighthouse.ops import causal_attention, lighthouse_attention
from lighthouse.ops.cross_entropy import IGNORE_INDEX, token_cross_entropy
from lighthouse.ops.fused import rope_qk
from lighthouse.ops.rope import lighthouse_inv_freq, rope_cos_sin, rope_inv_freq

AttentionFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


@dataclass
class Rotary:
    """The RoPE of one forward pass. cos, sin: (B, 1, N, D) of the pass's positions (B, N); inv_freq (D/2,)
    float32; explicit: the caller passed the positions (else they are 0..N-1)."""

    cos: Tensor
    sin: Tensor
    positions: Tensor
    inv_freq: Tensor
    explicit: bool = False

    def apply(self, q: Tensor, k: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """q (B, H, N, D), k (B, H_kv, N, D) rotated at the pass's positions, in `dtype` (standard RoPE)."""
        return rope_qk(q, k, self.cos, self.sin, dtype)

    @functools.cached_property
    def offset(self) -> int | Tensor:
        """The position of row 0 (0, or a (B,) tensor with explicit positions) for the op's rope="after_select",
        which places entries at start + index: the positions must be consecutive."""
        if not self.explicit:
            return 0
        start = self.positions[:, 0]
        steps = torch.arange(self.positions.shape[1], device=self.positions.device)
        if not torch.equal(self.positions, start[:, None] + steps):
            raise ValueError("lighthouse.rope='after_select' needs consecutive positions (start, start+1, ...) in "
                             "the Lighthouse layers")
        return start


@dataclass(frozen=True)
class UnrotatedAttention:
    """An attention callback that receives q/k before RoPE: fn(layer_idx, q, k, v, rotary) -> (B, H, N, D)."""

    fn: Callable[[int, Tensor, Tensor, Tensor, Rotary], Tensor]

    def __call__(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
        return self.fn(layer_idx, q, k, v, rotary)


@dataclass
class CausalLMOutput:
    logits: Tensor | None  # (B, N_kept, vocab)
    loss: Tensor | None = None  # scalar mean token loss (when labels are given)
    hidden: Tensor | None = None  # (B, N, hidden) after the final norm (forward(hidden_only=True): the trainer's loss)


class LlamaModel(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        # what the Lighthouse layers rotate with under rope="after_select" (equal to inv_freq unless rope_freqs
        # is "unscaled" and the model has rope_scaling)
        self.register_buffer("lighthouse_inv_freq", lighthouse_inv_freq(config), persistent=False)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """HF's init: normal(0, initializer_range) for linears/embeddings, zero biases, unit norms."""
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)

    def fuse_projections(self) -> None:
        """Inference only: each layer also keeps its q/k/v and gate/up weights concatenated, so a decode step runs
        two GEMMs where it ran five (extra memory: those weights once more). Call after the last change to the
        weights (loading, `.to()`); forward passes with gradients enabled keep using the parameters."""
        for layer in self.model.layers:
            layer.mlp.fuse()
            layer.self_attn.fuse()

    # ---- the per-layer attention rule (layer_plan.py's) ----
    def layer_uses_lighthouse(self, layer_idx: int, seq_len: int) -> bool:
        return layer_attention(self.config, layer_idx, seq_len).lighthouse

    def default_attention(self, dense: bool = False) -> AttentionFn | UnrotatedAttention:
        """The per-layer rule above. With lighthouse.rope == "after_select" (and not dense) an
        `UnrotatedAttention`: the op gets q/k before RoPE and rotates after selection with `lighthouse_inv_freq`;
        dense attention rotates with the pass's standard RoPE."""
        lh = self.config.lighthouse
        kw = dict(levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk, scorer=lh.scorer)

        def attn(layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            if not dense and self.layer_uses_lighthouse(layer_idx, q.shape[2]):
                return lighthouse_attention(q, k, v, **kw)
            return causal_attention(q, k, v)

        if dense or not lh.enabled or lh.rope == "before_pool":
            return attn

        def attn_after_select(layer_idx: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
            if layer_attention(self.config, layer_idx, q.shape[2]).rotates_after_select:
                return lighthouse_attention(q, k, v, **kw, rope="after_select", inv_freq=self.lighthouse_inv_freq,
                                            position_offset=rotary.offset)
            q, k = rotary.apply(q, k, v.dtype)
            return causal_attention(q, k, v)

        return UnrotatedAttention(attn_after_select)

    # ---- forward ----
    def forward(
        self,
        input_ids: Tensor,
        *,
        positions: Tensor | None = None,
        attention: AttentionFn | None = None,
        dense: bool = False,
        logits_to_keep: int | None = None,
        labels: Tensor | None = None,
        hidden_only: bool = False,
    ) -> CausalLMOutput:
        """input_ids (B, N) int64; positions (N,) or (B, N) absolute positions (default 0..N-1);
        labels (B, N) unshifted (HF convention: position t predicts labels[t+1]; -100 is ignored).
        logits_to_keep=k returns only the last k positions' logits; with labels and no
        logits_to_keep, the loss is computed in chunks and logits are not returned (never N x vocab);
        hidden_only=True returns the final hidden states instead of logits (the caller applies lm_head)."""
        B, N = input_ids.shape
        explicit = positions is not None
        if positions is None:
            positions = torch.arange(N, device=input_ids.device)
        if positions.dim() == 1:
            positions = positions[None].expand(B, N)
        attn_fn = attention if attention is not None else self.default_attention(dense)
        h = self.model.embed_tokens(input_ids)  # (B, N, hidden)
        cos, sin = rope_cos_sin(self.inv_freq, positions, h.dtype)
        rotary = Rotary(cos, sin, positions, self.inv_freq, explicit)
        attend = _layer_attention(rotary, attn_fn)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(layer, h, attend, use_reentrant=False)
            else:
                h = layer(h, attend)
        h = self.model.norm(h)
        if hidden_only:
            return CausalLMOutput(logits=None, hidden=h)
        loss = _chunked_loss(self.lm_head, h, labels) if labels is not None else None
        if labels is not None and logits_to_keep is None:
            return CausalLMOutput(logits=None, loss=loss)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return CausalLMOutput(logits=self.lm_head(h), loss=loss)

    @torch.no_grad()
    def token_losses(self, input_ids: Tensor, labels: Tensor, *, dense: bool = False) -> Tensor:
        """(B, N-1) per-token losses (0 where ignored); for evaluation."""
        out = self.forward(input_ids, dense=dense, logits_to_keep=input_ids.shape[1])
        logits = out.logits[:, :-1].float()
        return token_cross_entropy(logits, labels[:, 1:])


def _layer_attention(rotary: Rotary, attn_fn: AttentionFn | UnrotatedAttention):
    """The attention a decoder layer calls with its q/k/v before RoPE: RoPE as the pass's, then `attn_fn`
    (an `UnrotatedAttention` rotates what it needs itself)."""
    if isinstance(attn_fn, UnrotatedAttention):
        return lambda layer_idx, q, k, v: attn_fn(layer_idx, q, k, v, rotary)

    def attend(layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # cos/sin are float32: under autocast the rotation would promote q/k, so cast back to v's dtype (as HF
        # does); one fused kernel on CUDA inference, layouts kept
        q, k = rotary.apply(q, k, v.dtype)
        return attn_fn(layer_idx, q, k, v)  # (B, H, N, D)

    return attend


def _chunked_loss(lm_head: nn.Linear, h: Tensor, labels: Tensor, chunk: int = 4096) -> Tensor:
    """Mean next-token loss without materialising all (B, N, vocab) logits at once."""
    h, target = h[:, :-1], labels[:, 1:]
    total = h.new_zeros((), dtype=torch.float32)
    count = (target != IGNORE_INDEX).sum()
    for s in range(0, h.shape[1], chunk):
        logits = lm_head(h[:, s : s + chunk]).float()
        total = total + token_cross_entropy(logits, target[:, s : s + chunk], reduction="sum")
    return total / count.clamp(min=1)
