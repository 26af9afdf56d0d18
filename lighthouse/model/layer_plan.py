"""Which attention each layer runs: the one rule, asked by the model, the engine's plan and everything else.

A layer runs Lighthouse at sequence length N when the checkpoint's `lighthouse` block is enabled, the layer is not in `full_attn_layers`, and N >= max(min_seq_len, the op's own minimum);
otherwise it runs dense causal attention. Its RoPE: dense attention and the KV cache always use standard RoPE at
the model's frequencies (`inv_freq`). The op itself either takes q/k rotated that way (lighthouse.rope
"before_pool") or takes them un-rotated and rotates what it selects ("after_select") with `lighthouse_inv_freq`:
the model's frequencies (rope_freqs "model") or rope_theta's unscaled ones ("unscaled"). Sparse decode's context
in such a layer holds K rotated as the op rotated it, so its decode query and key follow the same frequencies.

This lives with the model (not the engine) because the model's own forward needs it too, and the dependency
direction is ops <- model <- engine; `lighthouse.engine.plan` hands it to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.ops.validation import min_seq_len as op_min_seq_len


@dataclass(frozen=True)
class LayerAttention:
    """What layer i runs at one sequence length.

    lighthouse: the layer runs the Lighthouse op (else dense causal attention).
    after_select: the op gets q/k before RoPE and rotates what it selects (lighthouse.rope == "after_select").
    unscaled: that rotation, and a sparse-decode context's K, use rope_theta's unscaled frequencies
        (`lighthouse_inv_freq` differs from `inv_freq` only then, and only with rope_scaling)."""

    lighthouse: bool
    after_select: bool = False
    unscaled: bool = False

    @property
    def rotates_after_select(self) -> bool:
        """The op runs here and wants q/k un-rotated."""
        return self.lighthouse and self.after_select


DENSE = LayerAttention(False)


def usable_lighthouse(config: ModelConfig) -> LighthouseConfig | None:
    """The checkpoint's lighthouse block when it can run the op at all (enabled, two levels or more), else None."""
    lh = config.lighthouse
    return lh if lh.enabled and lh.levels >= 2 else None


def min_sparse_len(lh: LighthouseConfig) -> int:
    """The shortest sequence the Lighthouse layers run the op on: the checkpoint's min_seq_len or the op's own."""
    return max(op_min_seq_len(lh.levels, lh.pooling_factor, lh.topk), lh.min_seq_len)


def lighthouse_layer_indices(config: ModelConfig) -> tuple[int, ...]:
    """Layers that run the op at lengths where it runs at all (what compact sessions keep a context for)."""
    lh = usable_lighthouse(config)
    if lh is None:
        return ()
    return tuple(i for i in range(config.num_hidden_layers) if i not in lh.full_attn_layers)


def layer_attention(config: ModelConfig, layer: int, seq_len: int) -> LayerAttention:
    """The rule (module docstring) for layer `layer` over `seq_len` positions."""
    lh = config.lighthouse  # (levels 1 runs the op too: it is dense attention; the engine's plan never asks it)
    if not lh.enabled or layer in lh.full_attn_layers or seq_len < min_sparse_len(lh):
        return DENSE
    return LayerAttention(True, lh.rope == "after_select", lh.rope_freqs == "unscaled")


def context_rotated_apart(config: ModelConfig) -> bool:
    """Whether a Lighthouse layer's sparse-decode context holds K rotated with other frequencies than the cache's
    (after_select with unscaled frequencies): its decode rows rotate with `lighthouse_inv_freq`, and a prefix-cache
    entry's context cannot be extended from the cache's K."""
    lh = usable_lighthouse(config)
    return lh is not None and lh.rope == "after_select" and lh.rope_freqs == "unscaled"


def sparse_unavailable(config: ModelConfig) -> str | None:
    """Why this checkpoint can never prefill (or decode, or keep compact sessions) sparsely, or None when it can:
    sparse paths need at least one layer that was trained with Lighthouse."""
    lh = config.lighthouse
    if not lh.enabled:
        why = "the checkpoint has no Lighthouse layers (its config.json has no `lighthouse` block)"
    elif lh.levels < 2:
        why = f"the checkpoint's lighthouse block has levels {lh.levels} (one level is dense attention)"
    elif not lighthouse_layer_indices(config):
        why = "every layer of the checkpoint is in lighthouse.full_attn_layers"
    else:
        return None
    return (f"sparse prefill unavailable: {why}, so every prompt is prefilled densely. A checkpoint trained with "
            "Lighthouse layers prefills sparsely (`lighthouse train`, or `lighthouse train --init-from` to adapt "
            "this one)")
