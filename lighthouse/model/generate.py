"""A minimal greedy generator over the model's attention seam (tests, evals and the trainer's checks).

The serving engine (lighthouse.engine) has the real KV cache and scheduler; this is the smallest correct
thing: one contiguous per-layer cache, batch size 1 semantics for the sparse path, greedy decoding.

Prefill modes:
  dense   every layer attends densely over the prompt.
  sparse  layers the checkpoint trained with Lighthouse run the op over the first N - dense_tail_tokens
          prompt tokens (full_attn_layers stay dense); the last `dense_tail_tokens` tokens are then prefilled
          densely against the full cache. Decode is dense over the whole cache in both modes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.ops import attention_with_cache


class ContiguousKVCache:
    """Per-layer K/V (B, H_kv, N, D) grown by concatenation; the callback writes before it attends."""

    def __init__(self, model: LlamaForCausalLM):
        self.model = model
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return next(iter(self.k.values())).shape[2] if self.k else 0

    def prefill_attention(self, sparse: bool):
        inner = self.model.default_attention(dense=not sparse)

        def attn(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            self.k[i], self.v[i] = k, v
            return inner(i, q, k, v)

        return attn

    def extend_attention(self):
        def attn(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            self.k[i] = torch.cat([self.k[i], k], dim=2)
            self.v[i] = torch.cat([self.v[i], v], dim=2)
            return attention_with_cache(q, self.k[i], self.v[i])

        return attn


@torch.no_grad()
def greedy_generate(
    model: LlamaForCausalLM,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    prefill: str = "dense",
    dense_tail_tokens: int = 0,
    eos_token_id: int | None = None,
) -> Tensor:
    """input_ids (B, N) -> (B, max_new_tokens) greedy continuation (stops early if every row hit EOS)."""
    if prefill not in ("dense", "sparse"):
        raise ValueError(f"prefill must be 'dense' or 'sparse' (got {prefill!r})")
    B, N = input_ids.shape
    cache = ContiguousKVCache(model)
    head = N - dense_tail_tokens if prefill == "sparse" else N
    if not 0 < head <= N:
        raise ValueError(f"dense_tail_tokens must be in [0, {N - 1}] for a {N}-token prompt (got {dense_tail_tokens})")
    out = model(input_ids[:, :head], attention=cache.prefill_attention(sparse=prefill == "sparse"), logits_to_keep=1)
    if head < N:
        out = model(
            input_ids[:, head:], positions=torch.arange(head, N, device=input_ids.device),
            attention=cache.extend_attention(), logits_to_keep=1,
        )
    new = []
    nxt = out.logits[:, -1].argmax(-1)  # (B,)
    for step in range(max_new_tokens):
        new.append(nxt)
        if eos_token_id is not None and bool((nxt == eos_token_id).all()):
            break
        if step == max_new_tokens - 1:
            break
        pos = torch.tensor([N + step], device=input_ids.device)
        out = model(nxt[:, None], positions=pos, attention=cache.extend_attention(), logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1)
    return torch.stack(new, dim=1)
