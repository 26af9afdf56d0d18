"""Paged decode attention: the reference against per-row contiguous attention, the Triton kernel against the
reference (under Triton's CPU interpreter, as scripts/test.sh runs it, or on a GPU), CUDA-graph capture on a
GPU, and the argument checks.

The spec used here is written independently of the reference: for each row and query head, list the attended
entries, read their slots out of the row's pages laid end to end, and take a float64 softmax attention.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from lighthouse.ops import paged_decode_attention, paged_decode_attention_ref
from lighthouse.ops import paged_attention as pa

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
CUDA = torch.cuda.is_available() and not INTERPRETING
triton_ok = not isinstance(pa._triton_impl(), str) if (INTERPRETING or CUDA) else False
needs_triton = pytest.mark.skipif(not triton_ok, reason="needs triton and TRITON_INTERPRET=1 (CPU) or a GPU")
_skip_without_gpu = pytest.mark.skipif(not (CUDA and triton_ok), reason="needs a CUDA device and triton")


def gpu(test):
    """GPU-only: marked `gpu` (`pytest -m gpu` selects it) and skipped without a CUDA device."""
    return pytest.mark.gpu(_skip_without_gpu(test))

DEV = "cuda" if CUDA else "cpu"


# ------------------------------------------------------------------------------------------- the cases


def make_case(lens, per, *, H=8, H_kv=2, D=32, BS=16, holes=False, layout="pool", dtype=torch.float32,
              seed=0, device="cpu", spare_blocks=1):
    """A batch over a shared paged cache whose blocks are handed out in shuffled order.

    layout: "pool" (k/v = pool[i, 0] / pool[i, 1] of a (layers, 2, blocks, ...) tensor), "strided" (pool[:, i, 0]
    of a (blocks, layers, 2, ...) tensor: block stride 4x a block's size) or "plain" (its own tensor)."""
    g = torch.Generator().manual_seed(seed)
    B, r = len(lens), H // H_kv
    slots = [n * (r if p else 1) for n, p in zip(lens, per)]
    MB = max(math.ceil(s / BS) for s in slots) + spare_blocks
    NB = B * MB + 3
    cache = dict(device=device, dtype=dtype)  # made there, then viewed: the views stay views on every device
    if layout == "pool":
        pool = torch.randn(2, 2, NB, BS, H_kv, D, generator=g).to(**cache)
        k, v = pool[1, 0], pool[1, 1]
    elif layout == "strided":
        pool = torch.randn(NB, 2, 2, BS, H_kv, D, generator=g).to(**cache)
        k, v = pool[:, 1, 0], pool[:, 1, 1]
    else:
        k, v = (torch.randn(NB, BS, H_kv, D, generator=g).to(**cache) for _ in range(2))
    order = torch.randperm(NB, generator=g)[: B * MB].view(B, MB)
    used = torch.tensor([[c < math.ceil(s / BS) for c in range(MB)] for s in slots])
    bt = torch.where(used, order, 0).to(torch.int32)  # unused columns and padding rows: zeros
    q = torch.randn(B, H, D, generator=g)
    c = dict(q=q, k_cache=k, v_cache=v, block_tables=bt, seq_lens=torch.tensor(lens, dtype=torch.int32),
             per_head=torch.tensor(per, dtype=torch.int32), hole_start=None, hole_end=None)
    if holes:
        hi = max(lens) + 2
        c["hole_start"] = torch.randint(0, hi, (B, H), generator=g, dtype=torch.int32)
        c["hole_end"] = torch.randint(0, hi, (B,), generator=g, dtype=torch.int32)
        big = max(range(B), key=lambda b: lens[b])
        c["hole_start"][big, 0], c["hole_end"][big] = 0, lens[big]  # head 0 of the longest row: all in the hole
        c["hole_start"][big, 1] = lens[big]  # head 1 of it: no hole (start >= end)
    c["q"] = q.to(**cache)
    return {n: x.to(device) if x is not None else None for n, x in c.items()}


def attended(c, b, h):
    """(entries, slots) that query head h of row b attends, in entry order."""
    H, H_kv = c["q"].shape[1], c["k_cache"].shape[2]
    r, j = H // H_kv, h % (H // H_kv)
    n, per = int(c["seq_lens"][b]), int(c["per_head"][b])
    hs = int(c["hole_start"][b, h]) if c["hole_start"] is not None else 0
    he = int(c["hole_end"][b]) if c["hole_end"] is not None else 0
    ts = [t for t in range(n) if not hs <= t < he]
    return ts, [t * r + j if per else t for t in ts]


def contiguous_spec(c, scale=None):
    """float64 attention per (row, query head) over that head's entries read from the row's pages in order."""
    q, k_cache, v_cache, bt = (c[n].cpu() for n in ("q", "k_cache", "v_cache", "block_tables"))
    B, H, D = q.shape
    _, BS, H_kv, _ = k_cache.shape
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros(B, H, D, dtype=torch.float64)
    for b in range(B):
        row_k = k_cache[bt[b].long()].reshape(-1, H_kv, D).double()  # (max_blocks * BS, H_kv, D)
        row_v = v_cache[bt[b].long()].reshape(-1, H_kv, D).double()
        for h in range(H):
            _, slots = attended(c, b, h)
            if not slots:
                continue
            g, idx = h // (H // H_kv), torch.tensor(slots)
            p = torch.softmax(row_k[idx, g] @ q[b, h].double() * scale, dim=0)
            out[b, h] = p @ row_v[idx, g]
    return out


def poison_unattended(c):
    """A copy of the case whose cache holds NaN in every slot that no (row, query head) attends."""
    c = dict(c)
    k, v = c["k_cache"].clone(), c["v_cache"].clone()
    keep = torch.zeros(k.shape[:3], dtype=torch.bool)
    BS, H_kv = k.shape[1], k.shape[2]
    H = c["q"].shape[1]
    bt = c["block_tables"].cpu()
    for b in range(bt.shape[0]):
        for h in range(H):
            for s in attended(c, b, h)[1]:
                keep[bt[b, s // BS], s % BS, h // (H // H_kv)] = True
    keep = keep.to(k.device)[..., None]
    c["k_cache"], c["v_cache"] = k.masked_fill(~keep, float("nan")), v.masked_fill(~keep, float("nan"))
    return c


def diff(a, b):
    e = (a.double().cpu() - b.double().cpu()).abs()
    return e.max().item(), e.mean().item()


LENS = [0, 1, 37, 16, 50, 3]  # empty, one entry, not a multiple of block_size, exactly one block, ...
PER = [0, 1, 1, 0, 0, 1]  # full-cache rows mixed with per-query-head rows


# ------------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("layout", ["pool", "strided", "plain"])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("H,H_kv", [(8, 2), (4, 4)])
def test_reference_equals_per_row_contiguous_attention(H, H_kv, holes, layout):
    c = make_case(LENS, PER, H=H, H_kv=H_kv, holes=holes, layout=layout, seed=H + H_kv + holes)
    got = paged_decode_attention_ref(**c)
    want = contiguous_spec(c)
    assert got.shape == c["q"].shape and got.dtype == c["q"].dtype
    assert layout == "plain" or c["k_cache"].storage_offset() > 0, "the cache is a view into a pool"
    mx, mean = diff(got, want)
    assert mx < 1e-5, f"max {mx:.2e} mean {mean:.2e}"
    assert torch.equal(got[0], torch.zeros_like(got[0])), "a row of length 0 outputs zeros"
    if holes:
        assert torch.equal(got[4, 0], torch.zeros_like(got[4, 0])), "a head with all its entries in the hole: zeros"


def test_reference_honours_scale_and_r1_rows_read_the_same_slots_in_both_kinds():
    c = make_case([20, 33], [0, 0], H=4, H_kv=4)
    got = paged_decode_attention_ref(**c, scale=0.3)
    assert diff(got, contiguous_spec(c, scale=0.3))[0] < 1e-5
    c2 = dict(c, per_head=torch.ones(2, dtype=torch.int32))
    assert torch.equal(paged_decode_attention_ref(**c2, scale=0.3), got)


def test_reference_ignores_whatever_unattended_slots_hold():
    c = make_case(LENS, PER, holes=True, spare_blocks=2)
    got = paged_decode_attention_ref(**poison_unattended(c))
    assert torch.equal(got, paged_decode_attention_ref(**c))


def test_cpu_tensors_run_the_row_path_by_default():
    c = make_case([5, 9], [0, 1])
    assert pa.choose_backend(c["q"])[0] == "rows"
    torch.testing.assert_close(paged_decode_attention(**c), paged_decode_attention_ref(**c), rtol=1e-5, atol=1e-6)
    assert torch.equal(paged_decode_attention(**c, backend="torch"), paged_decode_attention_ref(**c))


# ------------------------------------------------------------------------------------------- Triton


@needs_triton
@pytest.mark.parametrize("num_splits,tile", [(1, 16), (3, 16), (3, 64)])  # tiles of one page, or of 4
@pytest.mark.parametrize("H,H_kv,holes", [(8, 2, True), (4, 4, False)])
def test_triton_fp32_matches_the_reference(H, H_kv, holes, num_splits, tile, monkeypatch):
    from lighthouse.ops.triton import paged_decode as pd

    monkeypatch.setattr(pd, "TILE", tile)
    c = make_case(LENS, PER, H=H, H_kv=H_kv, holes=holes, layout="strided", device=DEV, seed=7)
    got = paged_decode_attention(**c, num_splits=num_splits, backend="triton")
    want = paged_decode_attention_ref(**c)
    mx, mean = diff(got, want)
    assert got.dtype == torch.float32 and mx < 1e-5, f"max {mx:.2e} mean {mean:.2e}"
    assert torch.equal(got[0], torch.zeros_like(got[0]))


@needs_triton
@pytest.mark.parametrize("num_splits", [1, 4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_16_bit_passes_the_flash_attention_rule(dtype, num_splits):
    c = make_case([0, 70, 41, 9], [0, 1, 0, 1], holes=True, dtype=dtype, device=DEV, seed=3)
    exact = contiguous_spec(c)  # float64 from the same bf16 values
    got = paged_decode_attention(**c, num_splits=num_splits, backend="triton")
    ref = paged_decode_attention_ref(**c)
    (mx, mean), (rmx, rmean) = diff(got, exact), diff(ref, exact)
    assert got.dtype == dtype
    assert mx <= 2 * rmx + 1e-6 and mean <= 2 * rmean + 1e-7, \
        f"triton max {mx:.2e} mean {mean:.2e} vs reference max {rmx:.2e} mean {rmean:.2e}"


@needs_triton
def test_triton_ignores_unattended_slots_and_empty_batches():
    c = make_case(LENS, PER, holes=True, device=DEV, spare_blocks=2)
    want = paged_decode_attention_ref(**c)
    got = paged_decode_attention(**poison_unattended(c), num_splits=2, backend="triton")
    assert diff(got, want)[0] < 1e-5
    z = make_case([0, 0], [0, 1], device=DEV)  # a CUDA-graph padding batch: lengths 0, tables of zeros
    assert torch.equal(paged_decode_attention(**z, num_splits=3, backend="triton"), torch.zeros_like(z["q"]))


@needs_triton
def test_default_split_count_fills_one_wave_from_static_shapes_only(monkeypatch):
    from lighthouse.ops.triton import paged_decode as pd

    monkeypatch.setattr(pd, "_sm_count", lambda device: 132)
    monkeypatch.setattr(pd, "WAVES", 1)
    cpu = torch.device("cpu")
    assert pd.default_num_splits(1, 8, 512 * 1024, cpu, resident=4) == 66  # 8 x 66 = 528 = 132 SMs x 4
    assert pd.default_num_splits(32, 8, 8192, cpu, resident=4) == 2  # 512 programs: one wave, not two
    assert pd.default_num_splits(128, 8, 1024, cpu, resident=4) == 1  # the batch fills the GPU by itself
    assert pd.default_num_splits(1, 8, 1000, cpu, resident=4) == 2  # no split under MIN_CHUNK slots
    assert pd.default_num_splits(1, 1, 1 << 22, cpu, resident=4) == pd.MAX_SPLITS
    assert pd.default_num_splits(1, 8, 512 * 1024, cpu, resident=4, waves=2) == 132  # a float8 cache: two waves


# ------------------------------------------------------------------------------------------- GPU only


@gpu
def test_gpu_bf16_long_rows_match_the_reference():
    n = 64 * 1024
    c = make_case([n, n - 100, 16 * 1024 + 5, 0], [0, 0, 1, 0], D=128, BS=128, holes=True, dtype=torch.bfloat16,
                  device="cuda", seed=11)
    got = paged_decode_attention(**c)  # auto: Triton on CUDA
    exact = paged_decode_attention_ref(**{k: (x.float() if x is not None and x.is_floating_point() else x)
                                          for k, x in c.items()})
    ref = paged_decode_attention_ref(**c)
    (mx, mean), (rmx, rmean) = diff(got, exact), diff(ref, exact)
    assert mx <= 2 * rmx + 1e-6 and mean <= 2 * rmean + 1e-7, \
        f"triton max {mx:.2e} mean {mean:.2e} vs reference max {rmx:.2e} mean {rmean:.2e}"
    from lighthouse.ops.triton import paged_decode as pd

    assert pd._RESIDENT and all(1 <= n <= 32 for n in pd._RESIDENT.values()), pd._RESIDENT


@gpu
def test_gpu_kernel_replays_inside_a_cuda_graph_with_new_lengths_and_queries():
    c = make_case([3000, 1200, 0, 700], [0, 1, 0, 1], D=128, BS=64, holes=True, dtype=torch.bfloat16,
                  device="cuda", seed=5)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up (compiles) outside the graph
        paged_decode_attention(**c)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(**c)
    for lens, seed in (([17, 1200, 5, 0], 1), ([3000, 1, 0, 699], 2)):
        c["seq_lens"].copy_(torch.tensor(lens, dtype=torch.int32))
        c["q"].copy_(torch.randn(c["q"].shape, generator=torch.Generator().manual_seed(seed)).to(c["q"]))
        graph.replay()
        want = paged_decode_attention_ref(**c)
        mx, mean = diff(out, want)
        assert mx < 2e-2, f"max {mx:.2e} mean {mean:.2e}"


# ------------------------------------------------------------------------------------------- errors


def _bad(c, **change):
    return dict(c, **change)


ERRORS = [
    (lambda c: _bad(c, k_cache=c["k_cache"].half()), "share one dtype"),
    (lambda c: _bad(c, **{n: c[n].double() for n in ("q", "k_cache", "v_cache")}), "float16, bfloat16 or float32"),
    (lambda c: _bad(c, q=c["q"][:, :, None, None]), r"\(B, H, D\)"),
    (lambda c: _bad(c, q=c["q"][:, :7]), "multiple"),
    (lambda c: _bad(c, v_cache=c["v_cache"][:, :8]), "v_cache must have k_cache's shape"),
    (lambda c: _bad(c, k_cache=c["k_cache"][:, :8], v_cache=c["v_cache"][:, :8]), "power of two"),
    (lambda c: _bad(c, block_tables=c["block_tables"].long()), "block_tables must be int32"),
    (lambda c: _bad(c, seq_lens=c["seq_lens"][:1]), "seq_lens must have shape"),
    (lambda c: _bad(c, per_head=c["per_head"].bool()), "per_head must be int32"),
    (lambda c: _bad(c, hole_start=torch.zeros(2, 8, dtype=torch.int32)), "together"),
    (lambda c: _bad(c, seq_lens=c["seq_lens"] * 100), "more than its table"),
]


@pytest.mark.parametrize("mutate,match", ERRORS)
def test_bad_arguments_raise_value_errors_that_say_what_to_change(mutate, match):
    c = make_case([5, 9], [0, 1])
    with pytest.raises(ValueError, match=match):
        paged_decode_attention(**mutate(c), backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        paged_decode_attention(**c, backend="cuda")


@needs_triton
@pytest.mark.parametrize("mutate,match", [
    (lambda c: _bad(c, k_cache=c["k_cache"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous in its last"),
    (lambda c: _bad(c, q=c["q"][..., :24], k_cache=c["k_cache"][..., :24], v_cache=c["v_cache"][..., :24]), "head dim"),
    (lambda c: _bad(c, k_cache=c["k_cache"].half()), "share one dtype"),
])
def test_triton_launcher_rejects_layouts_it_cannot_read(mutate, match):
    c = make_case([5, 9], [0, 1], device=DEV)
    with pytest.raises(ValueError, match=match):
        paged_decode_attention(**mutate(c), backend="triton")
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(**c, backend="triton", num_splits=0)
