"""The Triton kernels against the pure-PyTorch specification, under Triton's CPU interpreter.

scripts/test.sh exports TRITON_INTERPRET=1; without triton these tests skip. Sizes are the smallest that
exercise each feature (the interpreter runs every program in Python).
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0") and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 (CPU) or a GPU", allow_module_level=True)

from lighthouse.ops import lighthouse_ref as ref  # noqa: E402
from lighthouse.ops.triton import lighthouse_attention_triton, lighthouse_attention_triton_inference  # noqa: E402
from lighthouse.ops.triton import pool as tpool  # noqa: E402
from lighthouse.ops.triton.geometry import Plan  # noqa: E402
from lighthouse.ops.triton.select import select as tselect  # noqa: E402
from lighthouse.ops.validation import pad_seq  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0") else "cpu"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEV)


# ------------------------------------------------------------------------------------------ selection


def _ref_scores(s_base: torch.Tensor, plan: Plan) -> list[torch.Tensor]:
    s = s_base.float()
    s = torch.nn.functional.pad(s, (0, plan.n_run - plan.n_valid), value=ref.PAD_SCORE)
    return ref.max_pool_scores(s, plan.levels, plan.p)


@pytest.mark.parametrize("levels,p,n", [(3, 2, 512), (2, 4, 512)])
def test_cascade_breaks_ties_exactly_like_the_reference_network(levels, p, n):
    # scores drawn from 3 values: nearly every comparison is a tie, so only the exact network agrees
    g = torch.Generator().manual_seed(levels * 10 + p)
    B, H = 1, 2
    sq = torch.randint(0, 3, (B, H, n), generator=g).float().to(DEV)
    sk = torch.randint(0, 3, (B, H, n), generator=g).float().to(DEV)
    plan = Plan.make(n, levels, p, 128)
    want = ref.select(_ref_scores(sq, plan), _ref_scores(sk, plan), plan.n_run, levels, p, 128).indices
    got, inv = tselect(tpool.level_scores(sq, plan), tpool.level_scores(sk, plan), plan, 1)
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {want.numel()} slots differ"
    assert got.shape[-1] == ref.selected_length(plan.n_run, levels, p, 128) == plan.S
    # the inverse map points back at every selected slot, and only there
    slots = torch.arange(plan.S, device=DEV, dtype=torch.int32).expand(B, H, plan.S)
    assert torch.equal(inv.gather(2, got), slots)
    assert int((inv >= 0).sum()) == B * H * plan.S


# -------------------------------------------------------------------------------------- pool + scores


def _emulated_norm(x: torch.Tensor, order: int) -> torch.Tensor:
    """torch-level statement of reduction order `order` (see pool._sumsq_rows), fp32 ops one at a time."""
    rows, D = x.shape
    V = abs(order)
    lanes, acc, steps = tpool.order_params(D, V)
    xf = x.float()
    if V == 1:
        y = xf.view(rows, steps, acc, lanes)
        a = y[:, 0] * y[:, 0]
        for t in range(1, steps):
            a = torch.addcmul(a, y[:, t], y[:, t])  # not bitwise an fma for fp32; tests use steps == 1 there
        c = a[:, 0]
        for i in range(1, acc):
            c = c + a[:, i]
    else:
        y = xf.view(rows, steps, lanes, V)
        a = y[:, 0] * y[:, 0]
        for t in range(1, steps):
            a = torch.addcmul(a, y[:, t], y[:, t])
        c = a[..., 0]
        for i in range(1, V):
            c = c + a[..., i]
    while c.shape[1] > 1:
        h = c.shape[1] // 2
        c = c[:, :h] + c[:, h:] if order > 0 else c[:, 0::2] + c[:, 1::2]  # offsets 16..1, or 1..16
    return c[:, 0].double().sqrt().float().to(x.dtype)  # correctly rounded (torch's CPU sqrt is 0.5001 ulp)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("D", [64, 128])
def test_fused_norm_orders_match_their_statement_bit_for_bit(dtype, D):
    x = rand(256, D, dtype=dtype, seed=D)
    if dtype == torch.bfloat16:  # rows near a bf16 rounding midpoint, where the orders disagree (see the control)
        near = tpool.sensitive_rows("cpu", dtype, D, torch.Generator().manual_seed(D), want=256, chunk=1 << 15)
        x = torch.cat([x, near.to(DEV)])
        assert not torch.equal(_emulated_norm(x.cpu(), 4), _emulated_norm(x.cpu(), -4))  # the trees differ here
    assert len({abs(o) for o in tpool.CANDIDATE_ORDERS}) * 2 == len(tpool.CANDIDATE_ORDERS)  # both trees of each V
    for V in tpool.CANDIDATE_ORDERS:
        lanes, acc, steps = tpool.order_params(D, abs(V))
        if steps > 1 and dtype == torch.float32:
            continue  # fma vs mul+add: not expressible with torch CPU ops
        got = tpool.base_norms(x, V)
        want = _emulated_norm(x.cpu(), V).to(DEV)
        assert torch.equal(got, want), f"V={V}: {(got != want).sum().item()} rows differ"
        assert rel(got, x.double().norm(dim=-1)) < (1e-2 if dtype == torch.bfloat16 else 1e-6)


@pytest.mark.parametrize(
    "levels,p,n,n_run,D",
    [(3, 4, 2048 + 64, 4096, 16), (8, 2, 1000, 1024, 16), (4, 3, 700, 729, 32), (3, 4, 1024, 1024, 128)],
)  # (8, 2) and (4, 3): windows longer than one unrolled chunk (the kernel's runtime loop); D=128: the shape of record
def test_pool_gives_the_coarsest_level_and_max_pooled_scores(levels, p, n, n_run, D):
    plan = Plan(n, n_run, levels, p, 128)  # pooling needs only the lengths, not the selection's minimum
    x = rand(2, 2, n, D, dtype=torch.bfloat16, seed=3)
    coarse, scores, base = tpool.pool(x, plan, 1, store_base=True)
    xp = pad_seq(x, plan.n_run)
    want_coarse = ref.build_pyramid(xp.float(), levels, p)[-1]
    assert coarse.dtype == x.dtype
    assert torch.equal(coarse, tpool.pool_reference_order(x, plan))  # the stated order, bit for bit
    assert torch.equal(coarse, want_coarse.to(x.dtype))  # and the reference's mean, rounded to bf16
    norms = base[..., :n].to(x.dtype)
    want = torch.cat(_ref_scores(norms, plan)[1:], dim=2)
    assert torch.equal(scores, want)
    assert torch.equal(tpool.pool(x, plan, None)[0], coarse)  # the same coarse level without scores


def test_pool_sums_each_window_in_row_order():
    """Values spread over 2^-24 .. 2^24 make fp32 window sums inexact, so the summation order shows in the bf16
    means; the kernel must match its torch statement (row order) bit for bit, with a reversed order as control."""
    plan = Plan(4096, 4096, 3, 4, 128)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 4096, 32, generator=g) * torch.exp2(torch.randint(-24, 25, (1, 2, 4096, 32), generator=g).float())
    x = x.to(torch.bfloat16).to(DEV)
    coarse, _, _ = tpool.pool(x, plan, None)
    assert torch.equal(coarse, tpool.pool_reference_order(x, plan))
    rev = tpool.pool_reference_order(x.flip(2), Plan(4096, 4096, 3, 4, 128)).flip(2)  # each window summed backwards
    assert not torch.equal(coarse, rev), "inputs too tame: the order does not show"


# ---------------------------------------------------------------------------------------- whole op


CONFIGS = [  # B, H, H_kv, N, D, L, p, k, scorer
    (1, 2, 1, 600, 32, 3, 2, 128, "norm"),  # GQA, N not a multiple of the length unit
    (2, 1, 1, 256, 16, 2, 2, 128, "dilated"),  # B=2, dilated scorer
    (1, 1, 1, 1024, 16, 4, 2, 128, "norm"),  # two intermediate levels averaged on the fly
]


@pytest.mark.parametrize("B,H,H_kv,N,D,L,p,k,scorer", CONFIGS)
def test_fp32_forward_and_gradients_match_the_reference(B, H, H_kv, N, D, L, p, k, scorer):
    q = rand(B, H, N, D, seed=1).requires_grad_(True)
    kk = rand(B, H_kv, N, D, seed=2).requires_grad_(True)
    v = rand(B, H_kv, N, D, seed=3).requires_grad_(True)
    kw = dict(levels=L, pooling_factor=p, topk=k, scorer=scorer)
    out = lighthouse_attention_triton(q, kk, v, scores="torch", **kw)
    want = ref.lighthouse_attention(q, kk, v, **kw)
    assert out.shape == want.shape and out.dtype == want.dtype
    assert rel(out, want) < 1e-6, rel(out, want)
    g = rand(*out.shape, seed=4)
    got_g = torch.autograd.grad(out, (q, kk, v), g)
    want_g = torch.autograd.grad(want, (q, kk, v), g)
    for name, a, b in zip("qkv", got_g, want_g):
        assert rel(a, b) < 1e-5, f"d{name}: {rel(a, b):.2e}"
    if L == 2:  # the forward-only path gives the same bits (once: each call reruns the selection)
        inf = lighthouse_attention_triton_inference(q, kk, v, scores="torch", **kw)
        assert torch.equal(inf, out.detach())


def test_bf16_output_passes_the_flash_attention_rule():
    B, H, N, D, L, p, k = 1, 2, 512, 32, 2, 2, 128
    q, kk, v = (rand(B, H, N, D, dtype=torch.bfloat16, seed=s) for s in (5, 6, 7))
    kw = dict(levels=L, pooling_factor=p, topk=k)
    out = lighthouse_attention_triton_inference(q, kk, v, scores="torch", **kw)
    want = ref.lighthouse_attention(q, kk, v, **kw)
    sel = ref._select_padded(q, kk, v, N, L, p, k, "norm")
    exact = ref.attend_selected(q.float(), kk.float(), v.float(), sel, L, p)
    err, ref_err = rel(out, exact), rel(want, exact)
    assert err <= 2 * ref_err + 1e-6, f"ours {err:.2e} vs reference {ref_err:.2e}"


def test_scatter_is_deterministic_and_future_values_never_change_the_past():
    B, H, N, D, L, p, k = 1, 1, 256, 16, 2, 2, 128
    q, kk, v = (rand(B, H, N, D, seed=s) for s in (8, 9, 10))
    kw = dict(levels=L, pooling_factor=p, topk=k, scores="torch")
    a = lighthouse_attention_triton_inference(q, kk, v, **kw)
    assert torch.equal(a, lighthouse_attention_triton_inference(q, kk, v, **kw))
    v2 = v.clone()
    v2[:, :, 150:] += 1.0
    b = lighthouse_attention_triton_inference(q, kk, v2, **kw)
    assert torch.equal(a[:, :, :150], b[:, :, :150])
    assert not torch.equal(a[:, :, 150:], b[:, :, 150:])
