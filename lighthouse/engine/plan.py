"""What a prompt's prefill will do, decided before anything runs: the plan, apart from its execution.

Plan for a prompt of N tokens (`plan_prefill`):
- `split` = N - dense_tail_tokens when that reaches the checkpoint's min_seq_len (and the op's minimum);
  0 when the prompt is too short or the model has no Lighthouse layers: then everything is dense.
- sparse: positions [0, split) in one pass where the checkpoint's Lighthouse layers run the op and its
  full-attention layers run dense causal attention; then the tail [split, N) densely against the whole cache.
- dense: positions [0, N) in one pass of dense causal attention in every layer.
- sparse decode (asked, and the prefill is sparse): each Lighthouse layer keeps the prompt's selected
  sub-sequence (sparse_context.py); compact: those layers keep nothing else.

Which layers run the op, and with which RoPE and frequencies, is one rule: `layer_attention` (it lives with the
model, lighthouse/model/layer_plan.py, because the model's own forward asks it too; the engine asks it here).
This module imports nothing of the engine but sparse_context's arithmetic: a request may hold a plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from lighthouse.engine.sparse_context import selected_entries
from lighthouse.model.config import ModelConfig
from lighthouse.model.layer_plan import (LayerAttention, context_rotated_apart, layer_attention,
                                         lighthouse_layer_indices, min_sparse_len, sparse_unavailable,
                                         usable_lighthouse)

__all__ = ["LayerAttention", "PrefillPlan", "context_rotated_apart", "layer_attention", "lighthouse_layer_indices",
           "min_sparse_len", "plan_prefill", "sparse_unavailable", "usable_lighthouse"]


@dataclass
class PrefillPlan:
    prompt_len: int
    split: int  # positions [0, split) can take the sparse path; 0: none can
    sparse: bool  # run [0, split) through the Lighthouse layers (else all dense)
    sparse_decode: bool  # keep the selected sub-sequence for sparse decode
    lighthouse_layers: tuple[int, ...]  # layers that use the op at length `split`
    selected: int  # S per head per Lighthouse layer (0 without sparse decode)
    compact: bool = False  # (with sparse decode) the Lighthouse layers keep only their context, no full cache

    @property
    def sparse_tokens(self) -> int:
        return self.split if self.sparse else 0

    @property
    def dense_tokens(self) -> int:
        return self.prompt_len - self.sparse_tokens

    @property
    def path(self) -> str:
        return "sparse" if self.sparse else "dense"


def plan_prefill(config: ModelConfig, prompt_len: int, *, prefill: str, decode: str, dense_tail_tokens: int,
                 kv_mode: str = "full") -> PrefillPlan:
    """The plan (module docstring) of a prompt of `prompt_len` tokens under the request's modes, for the model
    whose config is `config`."""
    lh = usable_lighthouse(config)
    split = 0
    if lh is not None and prompt_len - dense_tail_tokens >= min_sparse_len(lh):
        split = prompt_len - dense_tail_tokens
    layers = tuple(i for i in range(config.num_hidden_layers)
                   if split and layer_attention(config, i, split).lighthouse)
    if not layers:
        split = 0
    # sparse decode attends to what the op selected for the prompt: it needs the sparse prefill (else: dense decode,
    # as the response's prefill info says)
    sparse_decode = decode == "sparse" and prefill == "sparse" and split > 0
    selected = selected_entries(split, lh.levels, lh.pooling_factor, lh.topk) if sparse_decode else 0
    return PrefillPlan(prompt_len, split, prefill == "sparse" and split > 0, sparse_decode, layers, selected,
                       kv_mode == "compact" and sparse_decode)
