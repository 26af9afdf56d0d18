"""Paged decode attention (flash-decoding): the Triton kernels behind `paged_attention.paged_decode_attention`.

One program per (split, KV head g, row b). It loads the r query heads of group g (times the row's Q queries, the
verify step of speculative decoding: row m of the tile is query m // r of head g*r + m % r) as an (R_PAD, D) tile and walks
its chunk of the row's slots in tiles of TILE slots: one block-table read per tile when block_size >= TILE (the
tile is one page), a vector of TILE // block_size reads otherwise; then K and V tiles of (TILE, D), D contiguous
(16-byte loads). Every K/V element of a full-cache row is read once per KV head; on a per-query-head row, slot s
belongs to head j = s % r only, so the same contiguous tiles serve the group with a per-(head, slot) mask and
each slot is again read once. Slots no head attends (past the length, in a hole) are never loaded. With Q queries per row each K/V tile is still
read once for all of them; query i masks entries past seq_len - Q + i (causal among the row's last Q entries). Scores
(R_PAD, TILE) and P.V are tl.dot's (tensor cores for 16-bit inputs, P rounded to the input dtype as in
FlashAttention; exact fp32 for fp32), softmax online in base 2.

Split-K: a row's slots are cut into num_splits chunks at run time from seq_lens (each a multiple of TILE); with
num_splits > 1 each program writes its partial (max, sum, acc), empty chunks a neutral one, and
`_combine_kernel` merges them per (row, query head). num_splits comes from static shapes and the compiled
kernel's occupancy only (`default_num_splits`: one full wave of programs), so a launch has the same grid and
buffers for every seq_lens: no host sync, CUDA-graph capturable.
"""
from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl
from torch import Tensor

from lighthouse.ops.paged_contract import check_paged_inputs
from lighthouse.ops.triton.geometry import INTERPRETING

log = logging.getLogger(__name__)

TILE = 128 if INTERPRETING else 64  # slots per loop step (TILE // block_size pages when block_size < TILE)
# A float8 cache: slots per loop step (a 16-bit tile's bytes at twice the slots), and whether its dots run in float16
# (e4m3 -> f16 is exact and cheap; to bf16 it goes through f32). One layer of 512K slots, 8 KV heads of 128, on an
# H200 (bench/results/2026-12-07_h200_gpu_checks/fp8_decode_variants.json): bf16 0.505 ms; float8 at TILE 64 in bf16
# 0.576 ms (slower than bf16), at 128 in bf16 0.487, at 128 in float16 0.425 (256: 0.441; 8 warps slower everywhere).
FP8_TILE: int | None = 128  # None: TILE
FP8_F16_DOT = True
# (One query per KV head as fp32 multiply-and-sum on the CUDA cores instead of the 16-row tensor-core tile was
# measured slower: H100, one 512K layer, bf16 0.925 vs 0.705 ms, float8 0.667 vs 0.426 ms;
# bench/results/2026-12-07_h100_session5_checks/. Not kept.)
WAVES = 1  # default split-K fills this many waves of programs (see default_num_splits)
# ... for a float8 cache: two (H100, bench/results/2026-12-07_h100_session6_checks/fp8/: one 512K layer 0.421 vs
# 0.427 ms at one wave, 0.430 at four; batch 32 x 16K 0.425 vs 0.436 ms); bf16 stays at one (0.718 vs 0.722 at two)
FP8_WAVES = 2
# An experiment (None: off): split-K chunks of this many slots (a multiple of TILE, at least max_slots / MAX_SPLITS)
# instead of n_slots / num_splits, and as many splits as the table's width needs. Every row's slots are then summed
# in the same order whatever its length, the batch or the queries per row, so a verify step's query i adds up
# exactly as the one-query step at that length would (speculation's greedy identity in bf16 at any batch). Measured
# (H100, FIXED_CHUNK 2048, bench/results/2026-12-07_h100_session7_checks/): identity held at batch 32 x 8K, but the
# plain decode step took 3.16 ms/token against 1.61 ms without, so it stays off.
FIXED_CHUNK: int | None = None
MIN_CHUNK = 512  # ... but no split gets fewer than this many of the table's slots
MAX_SPLITS = 256
NUM_WARPS, NUM_STAGES = 4, 3
FALLBACK_RESIDENT = 4
LOG2E = 1.4426950408889634


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, len_ptr, per_ptr, hs_ptr, he_ptr, o_ptr, m_ptr, l_ptr,
    qk_scale, q_scale, H, MAX_SLOTS, SPLITS,
    sq_b, sq_h, sq_q, sk_blk, sk_slot, sk_h, sv_blk, sv_slot, sv_h, sbt_b,
    CHUNK: tl.constexpr, D: tl.constexpr, R: tl.constexpr, QLEN: tl.constexpr, R_PAD: tl.constexpr, BS: tl.constexpr, TILE: tl.constexpr,
    SPLIT: tl.constexpr, HAS_HOLE: tl.constexpr, F32_DOT: tl.constexpr, FP8: tl.constexpr, F16_DOT: tl.constexpr,
):
    split = tl.program_id(0)
    g = tl.program_id(1)
    b = tl.program_id(2)
    m_row = tl.arange(0, R_PAD)  # tile row: query qi = m_row // R of head j = m_row % R within the group
    j = m_row % R
    qi = m_row // R
    d = tl.arange(0, D)
    head = g * R + j
    live = m_row < R * QLEN
    seq_len = tl.load(len_ptr + b)
    kind = tl.load(per_ptr + b)
    per = kind != 0  # per-query-head row
    full = kind == 0  # full-cache row
    n_slots = tl.minimum(tl.where(per, seq_len * R, seq_len), MAX_SLOTS)
    chunk = tl.cdiv(tl.cdiv(n_slots, SPLITS), TILE) * TILE
    if CHUNK > 0:  # FIXED_CHUNK: the same boundaries at every length and batch (a compile-time branch: 0 by default)
        chunk = CHUNK
    start = split * chunk
    end = tl.minimum(start + chunk, n_slots)

    limit = seq_len - (QLEN - 1 - qi)  # (R_PAD,) entries each query attends: t < limit
    q = tl.load(q_ptr + b.to(tl.int64) * sq_b + head[:, None] * sq_h + qi[:, None] * sq_q + d[None, :],
                mask=live[:, None], other=0.0)
    if F32_DOT:  # exact fp32 products (fp32 inputs; and the interpreter, whose 16-bit dot is wrong)
        q = q.to(tl.float32)
    elif F16_DOT:  # a float8 cache read as float16 (exact); q scaled first (float16 overflows past 65504)
        q = (q.to(tl.float32) * q_scale).to(tl.float16)
    if HAS_HOLE:
        hs = tl.load(hs_ptr + b * H + head, mask=live, other=0)
        he = tl.load(he_ptr + b)
    k_row = k_ptr + g.to(tl.int64) * sk_h
    v_row = v_ptr + g.to(tl.int64) * sv_h
    bt_row = bt_ptr + b.to(tl.int64) * sbt_b

    m_i = tl.full([R_PAD], float("-inf"), tl.float32)  # running max, base-2 units
    l_i = tl.zeros([R_PAD], dtype=tl.float32)
    acc = tl.zeros([R_PAD, D], dtype=tl.float32)
    for s0 in range(start, end, TILE):
        s = s0 + tl.arange(0, TILE)  # (TILE,) slots
        t = tl.where(per, s // R, s)  # entry index of each slot
        mine = ((s % R)[None, :] == j[:, None]) | full  # per-query-head rows: slot s is head s % R's
        ok = live[:, None] & (s < end)[None, :] & mine & (t[None, :] < limit[:, None])  # (R_PAD, TILE)
        if HAS_HOLE:
            ok = ok & ((t[None, :] < hs[:, None]) | (t[None, :] >= he))
        used = tl.max(ok.to(tl.int32), axis=0) > 0  # slots some head attends: the only ones loaded
        if TILE <= BS:  # one page: one table read
            page = tl.load(bt_row + s0 // BS).to(tl.int64)
        else:  # TILE // BS pages
            page = tl.load(bt_row + s // BS, mask=s < end, other=0).to(tl.int64)[:, None]
        off = page * sk_blk + (s % BS)[:, None] * sk_slot + d[None, :]  # (TILE, D), D contiguous
        k = tl.load(k_row + off, mask=used[:, None], other=0.0)
        if F16_DOT:
            k = k.to(tl.float16)
        elif FP8:  # a float8 cache (scale 1): exact in q's dtype
            k = k.to(q_ptr.dtype.element_ty)
        if F32_DOT:
            qk = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(ok, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a head with nothing yet: keep zeros, no NaN
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(qk - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_row + page * sv_blk + (s % BS)[:, None] * sv_slot + d[None, :], mask=used[:, None], other=0.0)
        if F16_DOT:
            v = v.to(tl.float16)
        elif FP8:
            v = v.to(q_ptr.dtype.element_ty)
        pv = p.to(v.dtype)  # rounded like the GPU's 16-bit dot operand (a no-op for fp32)
        if F32_DOT:
            acc = acc * alpha[:, None] + tl.dot(pv.to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(pv, v)
        m_i = m_new

    bh = (b.to(tl.int64) * H + head) * QLEN + qi  # (R_PAD,) output row (b, head, qi)
    if not SPLIT:  # the only program of its (row, group): write the output itself
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + bh[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty), mask=live[:, None])
    else:
        part = bh * SPLITS + split
        tl.store(o_ptr + part[:, None] * D + d[None, :], acc, mask=live[:, None])
        tl.store(m_ptr + part, m_i, mask=live)
        tl.store(l_ptr + part, l_i, mask=live)


@triton.jit
def _combine_kernel(acc_ptr, m_ptr, l_ptr, o_ptr, SPLITS, S_BLOCK: tl.constexpr, D: tl.constexpr):
    """One program per (row, query head, query): out = sum_s w_s acc_s / sum_s w_s l_s, w_s = 2^(m_s - max m)."""
    bh = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, D)
    m_run = tl.full([], float("-inf"), tl.float32)
    num = tl.zeros([D], dtype=tl.float32)
    den = tl.zeros([], dtype=tl.float32)
    for s0 in range(0, SPLITS, S_BLOCK):  # online over blocks of splits, as the main kernel over tiles
        sp = s0 + tl.arange(0, S_BLOCK)
        ok = sp < SPLITS
        m = tl.load(m_ptr + bh * SPLITS + sp, mask=ok, other=float("-inf"))
        lsum = tl.load(l_ptr + bh * SPLITS + sp, mask=ok, other=0.0)
        acc = tl.load(acc_ptr + (bh * SPLITS + sp)[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        m_new = tl.maximum(m_run, tl.max(m, axis=0))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # empty splits (m = -inf) weigh 0
        alpha = tl.exp2(m_run - m_use)
        w = tl.exp2(m - m_use)
        num = num * alpha + tl.sum(w[:, None] * acc, axis=0)
        den = den * alpha + tl.sum(w * lsum, axis=0)
        m_run = m_new
    out = num / tl.where(den > 0, den, 1.0)
    tl.store(o_ptr + bh * D + d, out.to(o_ptr.dtype.element_ty))


def supported(head_dim: int) -> bool:
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: one "SM", few programs


def resident_programs(kernel, device: torch.device) -> int:
    """How many programs of a compiled kernel one SM holds at once (threads, registers, shared memory)."""
    props = torch.cuda.get_device_properties(device)
    if getattr(kernel, "n_regs", None) is None:  # Triton loads the binary (and learns its registers) lazily
        kernel._init_handles()
    warps = kernel.metadata.num_warps
    by_threads = getattr(props, "max_threads_per_multi_processor", 2048) // (32 * warps)
    regs_per_warp = -(-max(kernel.n_regs, 1) * 32 // 256) * 256  # allocated per warp in units of 256
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // regs_per_warp // warps
    smem = kernel.metadata.shared
    by_smem = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024) // (smem + 1024) if smem else by_threads
    return max(1, min(by_threads, by_regs, by_smem))


def default_num_splits(B: int, H_kv: int, max_slots: int, device: torch.device, resident: int = 1,
                       waves: int | None = None) -> int:
    """Split-K factor from static shapes only.

    Fill one wave: as many programs as the SMs hold at once (SMs x `resident` programs each), never more, since a
    second, part-filled wave would make every row wait for it; no split shorter than MIN_CHUNK of the table's
    slots. A batch that fills the GPU by itself is not split."""
    rows = max(1, B * H_kv)
    want = (WAVES if waves is None else waves) * _sm_count(device) * resident // rows
    return max(1, min(want, triton.cdiv(max(max_slots, 1), MIN_CHUNK), MAX_SPLITS))


def _check_layout(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, *small: Tensor | None) -> None:
    if not supported(q.shape[-1]):
        raise ValueError(f"the Triton kernel needs a power-of-two head dim in [16, 256] (got {q.shape[-1]}); "
                         "use backend='torch'")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("block_tables", block_tables)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (strides {t.stride()}); "
                             f"pass {name}.contiguous()")
    for name, t in zip(("seq_lens", "per_head", "hole_start", "hole_end"), small):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (strides {t.stride()}); pass {name}.contiguous()")


_RESIDENT: dict[tuple, int] = {}  # (device, compile-time constants) -> resident programs per SM


def _resident_for(args: tuple, consts: dict, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    key = (device.index, tuple(a.dtype if isinstance(a, Tensor) else None for a in args), tuple(sorted(consts.items())))
    if key not in _RESIDENT:  # compiles (no launch) the split variant once per key
        try:
            kernel = _paged_decode_kernel.warmup(*args, grid=(1,), SPLIT=True, **consts)
            _RESIDENT[key] = resident_programs(kernel, device)
        except Exception as exc:  # a Triton without these internals: a typical value (4 at D=128, bf16)
            log.warning("paged decode: occupancy unknown (%s: %s); assuming %d programs per SM",
                        type(exc).__name__, exc, FALLBACK_RESIDENT)
            _RESIDENT[key] = FALLBACK_RESIDENT
    return _RESIDENT[key]


def paged_decode(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, seq_lens: Tensor, per_head: Tensor,
    hole_start: Tensor | None = None, hole_end: Tensor | None = None, *, scale: float | None = None,
    num_splits: int | None = None,
) -> Tensor:
    """The Triton path of `paged_attention.paged_decode_attention` (read its docstring): (B, H, D) or (B, H, Q, D) in
    q's dtype."""
    check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end)
    _check_layout(q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start, hole_end)
    if num_splits is not None and (not isinstance(num_splits, int) or isinstance(num_splits, bool)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"num_splits must be an int in [1, {MAX_SPLITS}] or None (got {num_splits!r})")
    B, H, D = q.shape[0], q.shape[1], q.shape[-1]
    Q = q.shape[2] if q.dim() == 4 else 1
    _, BS, H_kv, _ = k_cache.shape
    r = H // H_kv
    max_slots = block_tables.shape[1] * BS
    scale = D**-0.5 if scale is None else float(scale)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    if B == 0:
        return out
    has_hole = hole_start is not None
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    f32_dot = q.dtype == torch.float32 or INTERPRETING
    consts = dict(D=D, R=r, QLEN=Q, R_PAD=max(16, triton.next_power_of_2(r * Q)), BS=BS,
                  TILE=(FP8_TILE or TILE) if fp8 else TILE, HAS_HOLE=has_hole, F32_DOT=f32_dot, FP8=fp8,
                  F16_DOT=fp8 and FP8_F16_DOT and not f32_dot,
                  num_warps=NUM_WARPS, num_stages=NUM_STAGES)

    chunk = 0
    if num_splits is None and FIXED_CHUNK:
        tile = consts["TILE"]
        chunk = max(triton.cdiv(FIXED_CHUNK, tile), triton.cdiv(triton.cdiv(max_slots, MAX_SPLITS), tile)) * tile
        num_splits = max(1, triton.cdiv(max_slots, chunk))
    consts["CHUNK"] = chunk

    def args(part, m, lsum, splits):
        return (q, k_cache, v_cache, block_tables, seq_lens, per_head, hole_start if has_hole else seq_lens,
                hole_end if has_hole else seq_lens, part, m, lsum, LOG2E if consts["F16_DOT"] else scale * LOG2E,
                scale, H, max_slots, splits,
                q.stride(0), q.stride(1), q.stride(2) if Q > 1 else 0, *k_cache.stride()[:3], *v_cache.stride()[:3], block_tables.stride(0))

    if num_splits is None:
        resident = _resident_for(args(out, out, out, 2), consts, q.device)
        num_splits = default_num_splits(B, H_kv, max_slots, q.device, resident, FP8_WAVES if fp8 else WAVES)
    if num_splits == 1:  # the kernel writes the output itself
        _paged_decode_kernel[(1, H_kv, B)](*args(out, out, out, 1), SPLIT=False, **consts)
        return out
    part = torch.empty(B, H, Q, num_splits, D, device=q.device, dtype=torch.float32)
    m = torch.empty(B, H, Q, num_splits, device=q.device, dtype=torch.float32)
    lsum = torch.empty_like(m)
    _paged_decode_kernel[(num_splits, H_kv, B)](*args(part, m, lsum, num_splits), SPLIT=True, **consts)
    _combine_kernel[(B * H * Q,)](part, m, lsum, out, num_splits, S_BLOCK=min(32, triton.next_power_of_2(num_splits)),
                              D=D, num_warps=4)
    return out
