"""Our Lighthouse op against the paper's official implementation, side by side on one GPU.

The official code is never part of this repository: lay it out as bench/official.py says (default `.official/` at
the repository root, or LIGHTHOUSE_OFFICIAL=DIR); without it, or without a GPU, these tests skip.

Per configuration: the selected index sequences are the official ones (as sets; the order is reported); fp32
outputs within 1e-4 relative norm error; bf16 outputs pass FlashAttention's rule (error against an fp32
computation over the same selection at most 2x the official code's own error); fp32 gradients within 1e-4 (bf16:
2e-2). And where the official code crashes (selected sub-sequence > 65,535 entries: its launch-grid limit), ours
runs with finite outputs. (Until 2026-12 this was bench/compare_official.py: results in
bench/results/2026-11-28_h200_op_vs_official/. Its timings against the official code are
`python -m bench.perf.attention_bench --official DIR`'s.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.official import SELECTION_CUDA, available, import_official
from lighthouse.ops import lighthouse_attention_ref
from lighthouse.ops.lighthouse_ref import _select_padded, attend_selected

OFFICIAL = Path(os.environ.get("LIGHTHOUSE_OFFICIAL", Path(__file__).resolve().parents[2] / ".official"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not available(OFFICIAL), reason=f"the official code is not laid out under {OFFICIAL}"),
]

CONFIGS = [  # (B, H, N, D, L, p, k, dtype, scorer, check_grad)
    (2, 4, 32768, 128, 3, 4, 2048, "float32", "norm", True),
    (1, 8, 131072, 128, 3, 4, 2048, "bfloat16", "norm", False),
    (2, 4, 16384, 64, 3, 2, 4096, "bfloat16", "norm", False),
    (1, 8, 65536, 128, 3, 2, 4096, "float32", "norm", True),
    (2, 4, 16384, 128, 2, 4, 1024, "bfloat16", "norm", False),
    (1, 4, 131072, 128, 2, 4, 1024, "float32", "norm", False),
    (2, 8, 65536, 128, 3, 4, 2048, "bfloat16", "norm", True),
    (1, 8, 65536, 128, 3, 4, 512, "bfloat16", "dilated", False),
    (1, 4, 32768, 128, 3, 4, 512, "float32", "dilated", False),
]
CRASH_CONFIGS = [  # (B, H, N, D, L, p, k, dtype): selected sub-sequence > 65,535 entries
    (1, 8, 524288, 128, 3, 4, 4096, "bfloat16"),
    (1, 8, 262144, 128, 3, 2, 4096, "bfloat16"),
]


def _id(cfg) -> str:
    B, H, N, D, L, p, k, dt = cfg[:8]
    return f"B{B} H{H} N{N} D{D} L{L}p{p}k{k} {dt}" + (f" {cfg[8]}" if len(cfg) > 8 else "")


def sdpa_causal(q, k, v, scale=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def official_module(L, p, k, scorer):
    off = import_official(OFFICIAL)
    if scorer == "norm":
        sc = off.DialatedLighthouseNormScorer(pooling_factor=p, levels=L)
    else:
        sc = off.DilatedLighthouseScorer(attention=sdpa_causal, dilation=4, pooling_factor=p, levels=L)
    return off.LighthouseLocal(attention=sdpa_causal, scorer=sc, num_levels=L, pooling_factor=p, topk=k), sc


def official_indices(scorer_mod, xq, xk, xv, L, p, k):
    cuda = import_official(OFFICIAL, SELECTION_CUDA)
    with torch.no_grad():
        sq, sk, *_ = scorer_mod(xq, xk, xv)
        return cuda.LighthouseSelectionQkKqChunkedTopkNvrtc.forward(sq.float(), sk.float(), L, p, k, xq.shape[1])


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    torch.cuda.empty_cache()


@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_selection_outputs_and_gradients_match_the_official_code(cfg):
    B, H, N, D, L, p, k, dt, scorer, check_grad = cfg
    dtype = getattr(torch, dt)
    g = torch.Generator(device="cuda").manual_seed(sum(map(ord, _id(cfg))))
    # the official code takes (B, N, H, D); ours takes (B, H, N, D): pass transposed views of the same memory
    xq, xk, xv = (torch.randn(B, N, H, D, device="cuda", generator=g, dtype=torch.float32).to(dtype) for _ in range(3))
    q, kk, v = (x.transpose(1, 2) for x in (xq, xk, xv))
    mod, scorer_mod = official_module(L, p, k, scorer)

    idx_off = official_indices(scorer_mod, xq, xk, xv, L, p, k).long()
    sel = _select_padded(q, kk, v, N, L, p, k, scorer)
    assert idx_off.shape == sel.indices.shape
    differing = int((idx_off.sort(-1).values != sel.indices.sort(-1).values).any(-1).sum())
    assert differing == 0, f"{differing} rows select other entries than the official code"

    with torch.no_grad():
        out_off = mod(xq, xk, xv)  # (B, H, N, D)
        out_ours = lighthouse_attention_ref(q, kk, v, levels=L, pooling_factor=p, topk=k, scorer=scorer)
        diff = f"max abs diff {(out_ours.float() - out_off.float()).abs().max().item():.3e}"
        if dtype == torch.float32:
            err = rel(out_ours, out_off)
            assert err <= 1e-4, f"relative error vs the official output {err:.3e}, {diff}"
        else:
            ref32 = attend_selected(q.float(), kk.float(), v.float(), sel, L, p)  # same selection, fp32 math
            ours, theirs = rel(out_ours, ref32), rel(out_off, ref32)
            assert ours <= 2 * theirs + 1e-6, f"error vs fp32 {ours:.3e}, the official code's {theirs:.3e}, {diff}"
    if check_grad:
        dout = torch.randn_like(out_off)
        grads = []
        for run in ("official", "ours"):
            leaves = [x.detach().clone().requires_grad_(True) for x in (xq, xk, xv)]
            if run == "official":
                o = mod(*leaves)
            else:
                o = lighthouse_attention_ref(*(x.transpose(1, 2) for x in leaves), levels=L, pooling_factor=p,
                                             topk=k, scorer=scorer)
            o.backward(dout)
            grads.append([x.grad for x in leaves])
        errs = [rel(a, b) for a, b in zip(grads[1], grads[0])]
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert all(e <= tol for e in errs), f"gradient relative errors (q, k, v) {errs} > {tol}"


@pytest.mark.parametrize("cfg", CRASH_CONFIGS, ids=_id)
def test_ours_runs_where_the_official_launch_grid_gives_out(cfg):
    B, H, N, D, L, p, k, dt = cfg
    xq, xk, xv = (torch.randn(B, N, H, D, device="cuda", dtype=getattr(torch, dt)) for _ in range(3))
    with torch.no_grad():
        out = lighthouse_attention_ref(*(x.transpose(1, 2) for x in (xq, xk, xv)), levels=L, pooling_factor=p, topk=k)
        torch.cuda.synchronize()
    assert (N // p ** (L - 1)) + (L - 1) * p * k > 65535  # the selected sub-sequence's length S
    assert bool(torch.isfinite(out).all())
