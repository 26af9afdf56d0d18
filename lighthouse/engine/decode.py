"""One batched decode step: B sequences, one new token each, at their own positions.

Projections, MLPs and the LM head run batched over (B, 1); attention runs per sequence against its own cache
(lengths differ). With sparse decode a Lighthouse layer attends to the prompt's selected sub-sequence plus every
position after it (kv.sparse_k/v); other layers, and dense decode, attend to the whole cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lighthouse.engine.kv_cache import SequenceKV
from lighthouse.ops.attention import attention_with_cache, decode_attention, repeat_kv


def _sparse_attention(q: Tensor, kv: SequenceKV, i: int, n: int) -> Tensor:
    """q (1, H, 1, D) against the first n entries of layer i's sparse buffers (H heads, masked if padded)."""
    k, v = kv.sparse_k[i][:, :, :n], kv.sparse_v[i][:, :, :n]
    mask = kv.sparse_mask.get(i)
    if mask is None:
        return attention_with_cache(q, k, v)
    if q.is_cuda:
        return decode_attention(q, k, v, attn_mask=mask[..., :n])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., :n])


def decode_step(model, kvs: list[SequenceKV], last_tokens: list[int], sparse: list[bool]) -> Tensor:
    """Append one token per sequence; returns next-token logits (B, V) in float32."""
    device = kvs[0].k[0].device
    ids = torch.tensor(last_tokens, dtype=torch.long, device=device)[:, None]  # (B, 1)
    positions = torch.tensor([kv.length for kv in kvs], dtype=torch.long, device=device)[:, None]  # (B, 1)

    def attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (B, H, 1, D), k/v (B, H_kv, 1, D)
        outs = []
        for b, kv in enumerate(kvs):
            t = kv.length
            kv.k[i][:, :, t : t + 1].copy_(k[b : b + 1])
            kv.v[i][:, :, t : t + 1].copy_(v[b : b + 1])
            if sparse[b] and i in kv.sparse_k:
                n_rep = q.shape[1] // k.shape[1]
                s = kv.sparse_len
                kv.sparse_k[i][:, :, s : s + 1].copy_(repeat_kv(k[b : b + 1], n_rep))
                kv.sparse_v[i][:, :, s : s + 1].copy_(repeat_kv(v[b : b + 1], n_rep))
                outs.append(_sparse_attention(q[b : b + 1], kv, i, s + 1))
            else:
                outs.append(attention_with_cache(q[b : b + 1], kv.k[i][:, :, : t + 1], kv.v[i][:, :, : t + 1]))
        return torch.cat(outs, dim=0)

    with torch.no_grad():
        logits = model(ids, positions=positions, attention=attention, logits_to_keep=1).logits[:, -1]
    for b, kv in enumerate(kvs):
        kv.length += 1
        if sparse[b] and kv.sparse_k:
            kv.sparse_len += 1
    return logits.float()
