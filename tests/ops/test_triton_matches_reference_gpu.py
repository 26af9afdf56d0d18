"""The Triton path against the pure-PyTorch specification at the sizes it serves (up to 512K tokens, selected
sub-sequences past 65,535 entries, GQA, the dilated scorer), in bf16 on a GPU; and the same checks at toy sizes
under the CPU interpreter (TRITON_INTERPRET=1).

Per configuration: the fused selection picks the reference's index sequences (as sets; the order is reported); the
output, and where asked the gradients, pass FlashAttention's rule (error against an fp32 computation over the same
selection at most 2x the reference's own bf16 error); where fused bf16 norm scores are used, they equal torch's bit
for bit. (Until 2026-12 this was bench/triton_check.py, run by hand on an H200: results in
bench/results/2026-11-28_h200_triton_check/. Its timings are bench/perf/attention_bench.py's now, the stage
breakdown bench/perf/triton_stages_bench.py's.)
"""

from __future__ import annotations

import os

import pytest
import torch

from lighthouse.ops import lighthouse_ref as ref
from lighthouse.ops.attention import repeat_kv
from lighthouse.ops.validation import pad_seq

CONFIGS = [  # name, B, H, H_kv, N, D, L, p, k, scorer, grads
    ("32K L3p4k2048", 1, 8, 8, 32768, 128, 3, 4, 2048, "norm", True),
    ("B2 64K L3p4k2048", 2, 4, 4, 65536, 128, 3, 4, 2048, "norm", True),
    ("GQA 8/2 N=50000 L3p4k2048", 1, 8, 2, 50000, 128, 3, 4, 2048, "norm", True),
    ("GQA 32/8 64K L3p4k2048", 1, 32, 8, 65536, 128, 3, 4, 2048, "norm", True),
    ("N=100000 L2p4k1024", 1, 4, 4, 100000, 128, 2, 4, 1024, "norm", True),
    ("128K L3p2k4096", 1, 8, 8, 131072, 128, 3, 2, 4096, "norm", False),
    ("dilated 64K L3p4k512", 1, 8, 8, 65536, 128, 3, 4, 512, "dilated", False),
    ("512K L3p4k2048", 1, 8, 8, 524288, 128, 3, 4, 2048, "norm", True),
    ("512K L3p4k4096 S=65536", 1, 8, 8, 524288, 128, 3, 4, 4096, "norm", True),
    ("256K L3p2k4096 S=81920", 1, 8, 8, 262144, 128, 3, 2, 4096, "norm", True),
    ("512K L3p2k4096 S=147456", 1, 8, 8, 524288, 128, 3, 2, 4096, "norm", False),
]
TOY_CONFIGS = [  # the same code paths at sizes the CPU interpreter runs in seconds
    ("toy GQA N=600 L3p2k128", 1, 2, 1, 600, 32, 3, 2, 128, "norm", True),
    ("toy dilated B2 L2p2k128", 2, 1, 1, 256, 16, 2, 2, 128, "dilated", False),
]

needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
interpreted = os.environ.get("TRITON_INTERPRET") == "1"
toy_device = "cuda" if torch.cuda.is_available() and not interpreted else "cpu"


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _grads(fn, inputs, dout):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    fn(*leaves).backward(dout)
    return [x.grad for x in leaves]


def check_config(cfg, device: str) -> dict:
    """What bench/triton_check.py measured for one configuration: a dict with every error and verdict."""
    from lighthouse.ops.dispatch import lighthouse_attention
    from lighthouse.ops.triton import lighthouse_attention_triton, lighthouse_select_triton
    from lighthouse.ops.triton import pool as tpool
    from lighthouse.ops.triton.geometry import Plan

    name, B, H, H_kv, N, D, L, p, k, scorer, grads = cfg
    dt = torch.bfloat16
    g = torch.Generator(device=device).manual_seed(sum(map(ord, name)))
    q = torch.randn(B, H, N, D, device=device, generator=g).to(dt)
    kk = torch.randn(B, H_kv, N, D, device=device, generator=g).to(dt)
    v = torch.randn(B, H_kv, N, D, device=device, generator=g).to(dt)
    kw = dict(levels=L, pooling_factor=p, topk=k, scorer=scorer)
    plan = Plan.make(N, L, p, k)
    res = dict(name=name, S=plan.S)

    # selection: the reference on padded, repeated inputs vs the fused path
    n_rep = H // H_kv
    qp, kp, vp = (pad_seq(x, plan.n_run) for x in (q, repeat_kv(kk, n_rep), repeat_kv(v, n_rep)))
    sel = ref._select_padded(qp, kp, vp, N, L, p, k, scorer)
    ours_idx = lighthouse_select_triton(q, kk, v, **kw)
    res["indices_same_order"] = bool(torch.equal(ours_idx, sel.indices))
    res["indices_same_sets"] = bool(torch.equal(ours_idx.sort(-1).values, sel.indices.sort(-1).values))
    if not res["indices_same_sets"]:
        res["rows_differing"] = int((ours_idx.sort(-1).values != sel.indices.sort(-1).values).any(-1).sum())
    if scorer == "norm":
        order = tpool.norm_order(str(q.device), dt, D)
        res["fused_norm_order"] = order
        if order is not None:
            got = tpool.base_norms(q.reshape(-1, D)[: 1 << 20], order)
            res["fused_norm_mismatches"] = int((got != q.reshape(-1, D)[: 1 << 20].norm(dim=-1)).sum())
    del qp, kp, vp

    # outputs: ours and the reference (both bf16) vs fp32 over the same selection
    with torch.no_grad():
        out = lighthouse_attention(q, kk, v, backend="triton", **kw)  # the forward-only path
        want = ref.lighthouse_attention(q, kk, v, **kw)
        q32, k32, v32 = (pad_seq(x.float(), plan.n_run) for x in (q, repeat_kv(kk, n_rep), repeat_kv(v, n_rep)))
        exact = ref.attend_selected(q32, k32, v32, sel, L, p)[:, :, :N]
        del q32, k32, v32
    res["out_err_ours"], res["out_err_ref"] = rel(out, exact), rel(want, exact)
    res["out_finite"] = bool(torch.isfinite(out).all())
    del out, want, exact
    if grads:
        dout = torch.randn(B, H, N, D, device=device, generator=g).to(dt)
        got = _grads(lambda a, b, c: lighthouse_attention_triton(a, b, c, **kw), (q, kk, v), dout)
        rgot = _grads(lambda a, b, c: ref.lighthouse_attention(a, b, c, **kw), (q, kk, v), dout)

        def exact_fn(a, b, c):
            a, b, c = (pad_seq(x, plan.n_run) for x in (a, repeat_kv(b, n_rep), repeat_kv(c, n_rep)))
            return ref.attend_selected(a, b, c, sel, L, p)[:, :, :N]

        ex = _grads(exact_fn, tuple(x.float() for x in (q, kk, v)), dout.float())
        res["grad_err_ours"] = [rel(a, e) for a, e in zip(got, ex)]
        res["grad_err_ref"] = [rel(a, e) for a, e in zip(rgot, ex)]
    return res


def assert_passes(res: dict) -> None:
    assert res["indices_same_sets"], f"{res['name']}: {res.get('rows_differing')} rows select other entries: {res}"
    assert res.get("fused_norm_mismatches", 0) == 0, f"fused norm scores differ from torch's: {res}"
    assert res["out_finite"], res
    assert res["out_err_ours"] <= 2 * res["out_err_ref"] + 1e-6, (
        f"{res['name']}: output error {res['out_err_ours']:.3e} vs the reference's {res['out_err_ref']:.3e}")
    for name, o, r in zip("qkv", res.get("grad_err_ours", []), res.get("grad_err_ref", [])):
        assert o <= 2 * r + 1e-6, f"{res['name']}: d{name} error {o:.3e} vs the reference's {r:.3e}"


@pytest.mark.parametrize("cfg", [pytest.param(c, id=c[0], marks=needs_gpu) for c in CONFIGS])
def test_triton_selects_like_the_reference_and_passes_the_flash_attention_rule_at_scale(cfg):
    try:
        assert_passes(check_config(cfg, "cuda"))
    finally:
        torch.cuda.empty_cache()


@pytest.mark.skipif(toy_device == "cpu" and not interpreted, reason="CPU runs need TRITON_INTERPRET=1")
@pytest.mark.parametrize("cfg", TOY_CONFIGS, ids=[c[0] for c in TOY_CONFIGS])
def test_triton_selects_like_the_reference_and_passes_the_flash_attention_rule_at_toy_sizes(cfg):
    assert_passes(check_config(cfg, toy_device))
