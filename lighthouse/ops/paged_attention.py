"""Batched decode attention over a paged KV cache: the torch reference and the one dispatch point.

One query per row (or Q queries per row, the row's last Q entries, causal among them: the verify step of
speculative decoding) against that row's cached entries, rows of different lengths and of two kinds in one call:
"full cache" rows (every query head reads the same entries, GQA) and "per-query-head context" rows (every
query head has its own entries, interleaved in the row's slots). `paged_decode_attention` documents the
contract; `paged_decode_attention_ref` is its readable specification (and the CPU path), the Triton kernel in
`triton/paged_decode.py` the CUDA path (CUDA-graph capturable).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import Tensor

from lighthouse.ops.paged_attention_rows import paged_decode_attention_rows
from lighthouse.ops.paged_contract import check_paged_inputs, check_row_capacity
from lighthouse.ops.triton_import import fallback_level, import_kernels

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch", "rows")


def paged_decode_attention_ref(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor, per_head: Tensor,
    hole_start: Tensor | None = None, hole_end: Tensor | None = None, *, scale: float | None = None,
    num_splits: int | None = None,
) -> Tensor:
    """The specification of `paged_decode_attention` (same arguments; num_splits is ignored).

    Vectorized over rows: builds each (row, query head)'s slot list (B, H, Lmax) with Lmax = max(seq_lens),
    gathers K and V (B, H, Lmax, D), and takes a float32 softmax over the attended entries. Reads seq_lens on
    the host (one sync), so it is not CUDA-graph capturable; raises ValueError for a row longer than its table.
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end)
    if q.dim() == 3:
        return paged_decode_attention_ref(q[:, :, None], k_cache, v_cache, block_tables, seq_lens, per_head,
                                          hole_start, hole_end, scale=scale)[:, :, 0]
    B, H, Q, D = q.shape
    _, BS, H_kv, _ = k_cache.shape
    r = H // H_kv
    scale = D**-0.5 if scale is None else float(scale)
    check_row_capacity(block_tables, seq_lens, per_head, r, BS)
    lens, per = seq_lens.long(), per_head.bool()
    L = int(lens.max()) if B else 0
    if L == 0:
        return q.new_zeros(B, H, Q, D)
    dev = q.device
    t = torch.arange(L, device=dev)  # (L,) entry index
    h = torch.arange(H, device=dev)
    slot = torch.where(per[:, None, None], t * r + (h % r)[:, None], t)  # (B, H, L)
    keep = t < lens[:, None, None]  # (B, 1, L)
    if hole_start is not None:
        keep = keep & ~((t >= hole_start[:, :, None]) & (t < hole_end[:, None, None]))
    keep = keep.expand(B, H, L)
    slot = torch.where(keep, slot, 0)  # entries not attended read slot 0 and are masked below
    page = block_tables.long().gather(1, (slot // BS).reshape(B, H * L)).reshape(B, H, L)
    page = torch.where(keep, page, 0)  # a padding row's table may hold anything
    off, g = slot % BS, (h // r)[:, None]
    # query i of a row attends its entries t <= seq_len - Q + i (causal among the row's last Q entries)
    last = lens[:, None] - Q + torch.arange(Q, device=dev)  # (B, Q)
    keep_q = keep[:, :, None, :] & (t <= last[:, None, :, None])  # (B, H, Q, L)
    k = k_cache[page, off, g]  # (B, H, L, D)
    scores = torch.einsum("bhqd,bhld->bhql", q.float(), k.float()) * scale
    del k
    scores = scores.masked_fill(~keep_q, float("-inf"))
    m = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - m.masked_fill(m == float("-inf"), 0.0))  # (B, H, Q, L); 0 where masked
    denom = p.sum(-1, keepdim=True)  # (B, H, Q, 1); 0 for a head with nothing to attend
    v = v_cache[page, off, g].float().masked_fill(~keep[..., None], 0.0)  # unattended slots may hold NaN
    out = torch.einsum("bhql,bhld->bhqd", p, v) / torch.where(denom > 0, denom, 1.0)
    return out.to(q.dtype)


@functools.lru_cache(maxsize=None)
def _triton_impl():
    """The Triton launcher module, or the reason it is unavailable (a string)."""
    return import_kernels("lighthouse.ops.triton.paged_decode")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _log_choice(name: str, reason: str) -> None:
    log.log(fallback_level(reason), "paged decode attention backend: %s (%s)", name, reason)


def choose_backend(q: Tensor, backend: str | None = None) -> tuple[str, str]:
    """(backend name, reason). Raises ValueError for an impossible explicit request."""
    requested = "auto" if backend is None else backend
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None (got {requested!r})")
    if requested in ("torch", "rows"):
        return requested, "requested"
    impl = _triton_impl()
    if requested == "triton":
        if isinstance(impl, str):
            raise ValueError(f"backend='triton' requested but {impl}")
        if not (q.is_cuda or _interpreting()):
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
        return "triton", "requested"
    if isinstance(impl, str):
        return ("torch" if q.is_cuda else "rows"), impl
    if not q.is_cuda:
        return "rows", f"tensors on {q.device.type}"
    if not impl.supported(q.shape[-1]):
        return "torch", f"head dim {q.shape[-1]} not supported by the Triton kernel"
    return "triton", "CUDA"


def paged_decode_attention(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor, per_head: Tensor,
    hole_start: Tensor | None = None, hole_end: Tensor | None = None, *, scale: float | None = None,
    num_splits: int | None = None, backend: str | None = None,
) -> Tensor:
    """Decode attention of one query per row (or Q per row) over a paged KV cache.

    q: (B, H, D), RoPE applied; H = H_kv * r (GQA, r >= 1). Query head h = g*r + j reads KV head g = h // r.
        Or (B, H, Q, D): Q queries per row, the row's last Q entries (speculative decoding's verify step); query i
        attends to entries 0 .. seq_lens[b] - Q + i (causal among them; a query whose bound is below 0 outputs
        zeros: a row with fewer real tokens than Q puts them last and pads before them).
    k_cache, v_cache: (num_blocks, block_size, H_kv, D), q's dtype (float16, bfloat16 or float32), or both
        float8_e4m3fn (values as stored, scale 1; converted to q's dtype on load); block_size a power of two in
        [16, 1024]. May be strided views (e.g. `pool[i, 0]`): the last dim must be contiguous,
        the last three contiguous for full speed.
    block_tables: (B, max_blocks) int32. Slot s of row b is at block block_tables[b, s // block_size], offset
        s % block_size. Entries a row does not reach are never read (padding rows may hold zeros).
    seq_lens: (B,) int32, entries per row (per query head). Row b attends to its entries 0 .. seq_lens[b]-1; a
        row with 0 entries (CUDA-graph padding) outputs zeros.
    per_head: (B,) int32 in {0, 1}.
        0, full-cache row: entry t is slot t, for every query head.
        1, per-query-head row: entry t of query head h = g*r + j is slot t*r + j (the r heads of a group
           interleave their entries), read from KV head g. With r = 1 both kinds read slot t.
        A row needs seq_lens[b] (kind 0) or seq_lens[b]*r (kind 1) slots <= max_blocks * block_size.
    hole_start: (B, H) int32 and hole_end: (B,) int32, or both None. Entries t with
        hole_start[b, h] <= t < hole_end[b] are not attended by query head h of row b; hole_start >= hole_end
        means no hole. Slots not attended (holes, past the length) may hold anything, NaN included.
    scale: softmax scale, default D**-0.5. Scores and softmax in float32.
    num_splits: Triton only: thread blocks per (row, KV head) (split-K), default from static shapes and the
        device's SM count (`paged_decode.default_num_splits`); ignored by the reference.
    backend: None/"auto" (on CUDA: Triton when triton imports and D is a power of two in [16, 256], else the
        reference; elsewhere "rows"), "triton" (on CPU tensors only under TRITON_INTERPRET=1), "torch" (the
        reference) or "rows" (paged_attention_rows.py: row by row, each row's own entries; the CPU path).

    Returns (B, H, D) (or (B, H, Q, D)) in q's dtype: softmax(q.k * scale) v over each head's attended entries; zeros for a head
    with none. The Triton path does no host sync and allocates only from input shapes (CUDA-graph capturable;
    warm it up once before capture so that it compiles outside the graph); the reference syncs once.
    """
    name, reason = choose_backend(q, backend)
    _log_choice(name, reason)
    args = (q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end)
    if name == "torch":
        return paged_decode_attention_ref(*args, scale=scale)
    if name == "rows":
        return paged_decode_attention_rows(*args, scale=scale)
    return _triton_impl().paged_decode(*args, scale=scale, num_splits=num_splits)
