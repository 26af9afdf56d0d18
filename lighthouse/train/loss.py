"""The training loss without (B, N, vocab) logits: per-token cross-entropy computed in position chunks.

At 512K tokens SmolLM2's logits alone would be 512K x 49,152 floats (100 GB in fp32). The model returns its final
hidden states; each chunk of positions goes through lm_head and the cross-entropy under activation checkpointing,
so only one chunk's logits exist at a time, forward and backward (they are recomputed for the gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lighthouse.ops.cross_entropy import token_cross_entropy
LOSS_CHUNK = 8192  # positions per chunk: 8192 x 49,152 fp32 logits = 1.6 GB, transient


def _chunk_ce(lm_head_weight: Tensor, h: Tensor, target: Tensor) -> Tensor:
    logits = F.linear(h, lm_head_weight).float()
    return token_cross_entropy(logits, target)


def token_losses(model, ids: Tensor, labels: Tensor, *, dense: bool, chunk: int = LOSS_CHUNK) -> Tensor:
    """(B, N-1) next-token cross-entropy with gradient (0 where labels are IGNORE_INDEX). `model` may be wrapped
    (DDP): the forward goes through it, lm_head is read from the unwrapped module."""
    inner = getattr(model, "module", model)
    h = model(ids, dense=dense, hidden_only=True).hidden[:, :-1]
    target = labels[:, 1:]
    weight = inner.lm_head.weight
    if h.shape[1] <= chunk:
        return _chunk_ce(weight, h, target)
    parts = [checkpoint(_chunk_ce, weight, h[:, s : s + chunk], target[:, s : s + chunk], use_reentrant=False)
             for s in range(0, h.shape[1], chunk)]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def loss_and_predictions(model, ids: Tensor, labels: Tensor, *, dense: bool, chunk: int = LOSS_CHUNK) -> tuple[float, Tensor]:
    """(summed next-token loss over non-ignored targets, greedy predictions (B, N-1)), one position chunk of
    logits at a time (evaluation at any length)."""
    inner = getattr(model, "module", model)
    h = model(ids, dense=dense, hidden_only=True).hidden[:, :-1]
    target = labels[:, 1:]
    total, preds = 0.0, []
    for s in range(0, h.shape[1], chunk):
        logits = F.linear(h[:, s : s + chunk], inner.lm_head.weight).float()
        total += token_cross_entropy(logits, target[:, s : s + chunk], reduction="sum").item()
        preds.append(logits.argmax(-1))
    return total, torch.cat(preds, dim=1)
