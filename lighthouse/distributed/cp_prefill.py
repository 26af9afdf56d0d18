"""A whole model's prefill with the prompt sharded over W ranks (context parallelism), forward only.

Each rank runs every layer on its head-tail shard of the padded prompt (embedding, norms, projections and MLP
are per position, so they need nothing from other ranks), with RoPE at the shard's global positions; attention
is the only exchange: the model's Lighthouse layers run `context_parallel_lighthouse_attention`, its dense layers
`context_parallel_causal_attention`. The layer rule is the model's own (`layer_uses_lighthouse` at the prompt's
length), so the result is the single-process forward's.

    logits = context_parallel_prefill_logits(model, input_ids)   # every rank: the same (B, n) ids

This computes no KV cache: it is the library piece a multi-GPU engine builds on (see docs/deployment.md).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from lighthouse.distributed.context_parallel import (
    context_parallel_causal_attention,
    context_parallel_len,
    context_parallel_lighthouse_attention,
    head_tail_chunks,
    shard_sequence,
)
from lighthouse.model.llama import LlamaForCausalLM, Rotary, UnrotatedAttention


@torch.no_grad()
def context_parallel_prefill_logits(model: LlamaForCausalLM, input_ids: Tensor, *, dense: bool = False,
                                    pad_id: int = 0, group=None) -> Tensor:
    """Collective: the logits of the prompt's last position, on every rank.

    input_ids: (B, n) int64, the whole prompt, identical on every rank of `group` (default: the world); each
    rank embeds only its shard. dense: every layer dense (as model(..., dense=True)). pad_id: the token the
    prompt is padded with up to `context_parallel_len` (padding never changes positions before n).
    Returns (B, vocab) float32, equal to model(input_ids).logits[:, -1] in one process.
    """
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    B, n = input_ids.shape
    lh = model.config.lighthouse
    sparse = {i for i in range(model.config.num_hidden_layers) if not dense and model.layer_uses_lighthouse(i, n)}
    N = (context_parallel_len(n, world, levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk)
         if sparse else context_parallel_len(n, world))
    ids = shard_sequence(F.pad(input_ids, (0, N - n), value=pad_id), rank, world, dim=1)  # (B, 2C)
    positions = shard_sequence(torch.arange(N, device=input_ids.device), rank, world, dim=0)  # (2C,) global
    captured: dict[str, Tensor] = {}
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    try:
        model(ids, positions=positions, attention=_attention(model, n, sparse, group), logits_to_keep=1)
    finally:
        hook.remove()
    logits = torch.zeros(B, model.config.vocab_size, device=input_ids.device, dtype=torch.float32)
    local = _local_index(n - 1, N, rank, world)
    if local is not None:  # this rank holds the last position: its final hidden state -> logits
        logits += model.lm_head(captured["h"][:, local]).float()
    dist.all_reduce(logits, group=group)  # the owner's logits plus zeros
    return logits


def _local_index(pos: int, N: int, rank: int, world: int) -> int | None:
    """Where global position `pos` sits in this rank's shard, or None if another rank holds it."""
    C = N // (2 * world)
    for half, c in enumerate(head_tail_chunks(rank, world)):
        if c * C <= pos < (c + 1) * C:
            return half * C + pos - c * C
    return None


def _attention(model: LlamaForCausalLM, n: int, sparse: set[int], group):
    lh = model.config.lighthouse
    kw = dict(levels=lh.levels, pooling_factor=lh.pooling_factor, topk=lh.topk, scorer=lh.scorer, n_valid=n,
              group=group)

    def rotated(layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q/k rotated at global positions
        if layer_idx in sparse:
            return context_parallel_lighthouse_attention(q, k, v, **kw)
        return context_parallel_causal_attention(q, k, v, group)

    if lh.rope == "before_pool" or not sparse:
        return rotated

    def unrotated(layer_idx: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
        if layer_idx in sparse:  # the op rotates the entries it selected at their global positions
            return context_parallel_lighthouse_attention(q, k, v, **kw, rope="after_select", inv_freq=rotary.inv_freq)
        q, k = rotary.apply(q, k, v.dtype)
        return context_parallel_causal_attention(q, k, v, group)

    return UnrotatedAttention(unrotated)
