"""The prompt's Lighthouse-selected sub-sequence, kept per Lighthouse layer for sparse decode.

A decode token comes after every prompt entry in the op's causal order, so under Lighthouse it would attend to
the whole selected sub-sequence of the prompt: every coarsest entry plus the p children of each refined parent
per finer level (S = N/p^(L-1) + (L-1)*p*k entries per query head). The op's own `lighthouse_select` names
those entries; this module gathers their pooled K and V.

Where the prompt length is not a multiple of the op's length unit, the op pads with zeros. Here a pooled entry
is the mean over its *real* positions only, and entries that cover only padding are masked out (`valid`);
this is the one place sparse decode differs from what the op would compute for a padded sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.ops import level_offsets, lighthouse_select, padded_len, repeat_kv, selected_length


def selected_entries(n: int, levels: int, pooling_factor: int, topk: int) -> int:
    """S, the selected sub-sequence length for a prompt of n positions (after the op's padding)."""
    return selected_length(padded_len(n, levels, pooling_factor, topk), levels, pooling_factor, topk)


def _pyramid_means(x: Tensor, n: int, n_pad: int, levels: int, p: int) -> tuple[Tensor, Tensor]:
    """x (B, H, n, D) -> the concatenated pyramid (B, H, P, D) of means over real positions, and (P,) valid."""
    B, H, _, D = x.shape
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, n_pad - n))
    real = (torch.arange(n_pad, device=x.device) < n).float()
    means, valid = [], []
    for level in range(levels):
        c = p**level
        s = xp.view(B, H, n_pad // c, c, D).sum(3)
        cnt = real.view(n_pad // c, c).sum(1)
        means.append((s / cnt.clamp(min=1)[:, None]).to(x.dtype))
        valid.append(cnt > 0)
    return torch.cat(means, dim=2), torch.cat(valid)


@torch.no_grad()
def select_context(q: Tensor, k: Tensor, v: Tensor, *, levels: int, pooling_factor: int, topk: int,
                   scorer: str = "norm") -> tuple[Tensor, Tensor, Tensor | None]:
    """q (1, H, n, D), k/v (1, H_kv, n, D) after RoPE -> (K_sel, V_sel) each (1, H, S, D) in k's dtype, and
    a (1, H, 1, S) bool mask of entries that hold real positions (None when all do)."""
    n = q.shape[2]
    idx = lighthouse_select(q, k, v=v, levels=levels, pooling_factor=pooling_factor, topk=topk, scorer=scorer)
    n_pad = padded_len(n, levels, pooling_factor, topk)
    assert level_offsets(n_pad, levels, pooling_factor)[0] == 0
    n_rep = q.shape[1] // k.shape[1]
    out = []
    valid = None
    for x in (k, v):
        pyr, valid = _pyramid_means(repeat_kv(x, n_rep), n, n_pad, levels, pooling_factor)
        out.append(pyr.gather(2, idx[..., None].expand(-1, -1, -1, x.shape[3])))
        del pyr
    mask = valid[idx][:, :, None, :]  # (1, H, 1, S)
    return out[0], out[1], (None if bool(mask.all()) else mask)
