"""The CPU path of `paged_attention.paged_decode_attention`: one row at a time, only the row's own entries.

The reference (`paged_decode_attention_ref`) pads every row to the longest and gathers K/V once per query head
(B, H, L_max, D): with 64 rows of 3-8K entries on the bundled checkpoint that is ~0.5 GB of float32 per layer and
step, and the decode step of a loaded CPU server took ~12 s (bench/results/2026-12-07_cpu_short_prompt_ttft). Here
each row gathers its pages once per KV head ((H_kv, n, D), n its own length), the r query heads of a group (times Q
queries) share them in one batched matmul, and per-query-head rows read their interleaved slots as (H, n, D). Same
float32 softmax, same masks (causal among the last Q entries, holes, zeros for a head with nothing to attend):
tests/ops/test_paged_attention_rows.py checks it against the reference. One layer of 64 rows of 3-8K entries: 1,137 ms
(reference) vs 133 ms; 128 rows of 40-80 entries: 12.8 vs 14.1 ms (bench/results/2026-12-07_cpu_short_prompt_ttft_slices/).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.ops.paged_contract import check_paged_inputs, check_row_capacity


def paged_decode_attention_rows(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor, per_head: Tensor,
    hole_start: Tensor | None = None, hole_end: Tensor | None = None, *, scale: float | None = None,
) -> Tensor:
    """`paged_decode_attention`'s contract (read its docstring), computed row by row."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end)
    if q.dim() == 3:
        return paged_decode_attention_rows(q[:, :, None], k_cache, v_cache, block_tables, seq_lens, per_head,
                                           hole_start, hole_end, scale=scale)[:, :, 0]
    B, H, Q, D = q.shape
    _, BS, H_kv, _ = k_cache.shape
    r = H // H_kv
    scale = D**-0.5 if scale is None else float(scale)
    check_row_capacity(block_tables, seq_lens, per_head, r, BS)
    lens, per = seq_lens.tolist(), per_head.tolist()
    out = q.new_zeros(B, H, Q, D)
    for b in range(B):
        n = int(lens[b])
        slots = n * r if per[b] else n
        if n == 0:
            continue
        pages = block_tables[b, : -(-slots // BS)].long()
        k = k_cache[pages].reshape(-1, H_kv, D)[:slots].float()  # (slots, H_kv, D)
        v = v_cache[pages].reshape(-1, H_kv, D)[:slots].float()
        has_hole = hole_start is not None and bool((hole_start[b] < hole_end[b]).any())
        keep = None  # (H, Q, n): None when every query attends every entry (one query, no hole)
        if Q > 1 or has_hole:
            t = torch.arange(n, device=q.device)
            keep = (t[None, :] <= (n - Q + torch.arange(Q, device=q.device))[:, None])[None].expand(H, Q, n)
            if has_hole:
                hole = (t[None, :] >= hole_start[b].long()[:, None]) & (t[None, :] < int(hole_end[b]))  # (H, n)
                keep = keep & ~hole[:, None, :]
        if per[b]:  # slot t*r + j is entry t of query head g*r + j: (H, n, D), one query head per batch
            k = k.view(n, r, H_kv, D).permute(2, 1, 0, 3).reshape(H, n, D)
            v = v.view(n, r, H_kv, D).permute(2, 1, 0, 3).reshape(H, n, D)
            qb, kb, vb, mask = q[b].float(), k, v, keep  # (H, Q, D), (H, n, D)
        else:  # the group's r heads x Q queries share their KV head: (H_kv, r*Q, D) against (H_kv, n, D)
            qb = q[b].float().reshape(H_kv, r * Q, D)
            kb, vb = k.permute(1, 0, 2), v.permute(1, 0, 2)
            mask = keep.reshape(H_kv, r * Q, n) if keep is not None else None
        scores = torch.bmm(qb, kb.transpose(1, 2)) * scale
        if mask is None:
            o = torch.bmm(torch.softmax(scores, dim=-1), vb)
        else:
            scores = scores.masked_fill(~mask, float("-inf"))
            m = scores.amax(-1, keepdim=True)
            p = torch.exp(scores - m.masked_fill(m == float("-inf"), 0.0))
            denom = p.sum(-1, keepdim=True)
            if has_hole:
                vb = vb.masked_fill(~mask.any(1)[..., None], 0.0)  # slots in a hole may hold NaN
            o = torch.bmm(p, vb) / torch.where(denom > 0, denom, 1.0)
        out[b] = o.reshape(H, Q, D).to(q.dtype)
    return out
