"""The fused RMSNorm / RoPE kernels against the model's torch code, and the dispatch that picks between them.

Kernel tests run under Triton's CPU interpreter (TRITON_INTERPRET=1, as scripts/test.sh sets) or on a GPU, and
skip without triton; dispatch tests run anywhere. RoPE must match bit for bit; RMSNorm may differ only by the
order of its fp32 sum of squares: at most 1 ulp of the output, on few elements.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

import lighthouse.ops.fused as fused
from lighthouse.model import LlamaForCausalLM, model_preset
from lighthouse.ops.rope import apply_rope, rope_cos_sin

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEV = "cuda" if torch.cuda.is_available() and not INTERPRETING else "cpu"
needs_kernels = pytest.mark.skipif(not HAS_TRITON or not (INTERPRETING or torch.cuda.is_available()),
                                   reason="needs triton, and TRITON_INTERPRET=1 (CPU) or a GPU")
_skip_without_gpu = pytest.mark.skipif(not HAS_TRITON or not torch.cuda.is_available() or INTERPRETING,
                                       reason="needs triton and a GPU (without the interpreter)")


def needs_gpu(test):
    """GPU-only: marked `gpu` (`pytest -m gpu` selects it) and skipped without a CUDA device."""
    return pytest.mark.gpu(_skip_without_gpu(test))


def kernels():
    from lighthouse.ops.triton import fused_norm_rope  # noqa: PLC0415 - imports triton

    return fused_norm_rope


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-element distance in units in the last place of a's dtype (consecutive floats are 1 apart)."""
    assert a.dtype == b.dtype
    ints = {2: torch.int16, 4: torch.int32}[a.element_size()]
    nbits = 8 * a.element_size()

    def ordered(x):
        bits = x.contiguous().view(ints).long()
        return torch.where(bits < 0, -(bits & ((1 << (nbits - 1)) - 1)), bits)

    return (ordered(a) - ordered(b)).abs()


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same strides in every dim longer than 1 (a size-1 dim's stride is never used)."""
    return a.shape == b.shape and all(sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()) if n > 1)


def old_rms_norm(x, weight, eps):  # RMSNorm.forward before the fused kernels, verbatim
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def qk_views(B, H, H_kv, N, D, dtype, layout, seed=0):
    """q (B, H, N, D), k (B, H_kv, N, D) as the model makes them: `layout` "transposed" (one projection each,
    .view(...).transpose(1, 2)), "split" (one fused q|k|v projection, non-dense views), or "contiguous"."""
    if layout == "contiguous":
        return rand(B, H, N, D, dtype=dtype, seed=seed), rand(B, H_kv, N, D, dtype=dtype, seed=seed + 1)
    if layout == "transposed":
        q = rand(B, N, H * D, dtype=dtype, seed=seed).view(B, N, H, D).transpose(1, 2)
        return q, rand(B, N, H_kv * D, dtype=dtype, seed=seed + 1).view(B, N, H_kv, D).transpose(1, 2)
    qkv = rand(B, N, (H + 2 * H_kv) * D, dtype=dtype, seed=seed)
    q, k, _ = qkv.split([H * D, H_kv * D, H_kv * D], dim=-1)
    return q.view(B, N, H, D).transpose(1, 2), k.view(B, N, H_kv, D).transpose(1, 2)


def cos_sin(B, N, D, dtype, seed=0, device=DEV):
    """cos/sin (B, 1, N, D) from `rope_cos_sin` at positions (B, N) that differ per row, as in a decode batch."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 100_000, (B, N), generator=g)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    cos, sin = rope_cos_sin(inv_freq, positions, dtype)
    return cos.to(device), sin.to(device)


# --------------------------------------------------------------------------------------------------- rms_norm


@needs_kernels
@pytest.mark.parametrize("hidden", [64, 96, 4096])  # 96: a masked block
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weight", ["ones", "random"])
def test_rms_norm_matches_the_model_code_up_to_summation_order(dtype, hidden, weight):
    x = rand(3, 37, hidden, dtype=dtype, seed=hidden, scale=3.0)
    w = torch.ones(hidden, dtype=dtype, device=DEV)
    if weight == "random":
        w = (1 + rand(hidden, seed=1, scale=0.3)).to(dtype)
    got, want = kernels().rms_norm(x, w, 1e-5), old_rms_norm(x, w, 1e-5)
    assert got.shape == want.shape and got.dtype == want.dtype and got.is_contiguous()
    d = ulps(got, want)
    msg = f"max {d.max().item()} ulp, {(d > 0).float().mean().item():.2%} of elements differ"
    if dtype == torch.float32:  # a few fp32 ulps: the sums of squares differ in their last bits
        rel = ((got - want).abs() / want.abs().clamp(min=1e-30)).max().item()
        assert rel <= 1e-6, f"max relative diff {rel:.2e}; {msg}"
        return
    # h differs by at most 1 ulp (the fp32 sums differ in their last bits, and h is rounded once); the weight
    # multiplies that ulp by |w| before the product is rounded again: up to 2 ulps of the output where |w| != 1
    assert d.max().item() <= (1 if weight == "ones" else 2) and (d > 0).float().mean().item() < 0.02, msg
    # FlashAttention's criterion: against fp64, no worse than twice the reference's own error in this dtype
    exact = old_rms_norm(x.double(), w.double(), 1e-5)
    err, ref_err = (got.double() - exact).abs(), (want.double() - exact).abs()
    assert err.max() <= 2 * ref_err.max() + 1e-12 and err.mean() <= 2 * ref_err.mean() + 1e-12, (
        f"max {err.max().item():.2e} vs ref {ref_err.max().item():.2e}, mean {err.mean().item():.2e} vs "
        f"{ref_err.mean().item():.2e}")


@needs_kernels
def test_rms_norm_reads_rows_with_a_stride():
    wide = rand(2, 5, 256, dtype=torch.bfloat16, seed=3)
    x = wide[..., :128]  # rows 256 apart, each contiguous
    w = torch.ones(128, dtype=torch.bfloat16, device=DEV)
    got, want = kernels().rms_norm(x, w, 1e-6), old_rms_norm(x, w, 1e-6)
    assert ulps(got, want).max().item() <= 1


@needs_kernels
def test_rms_norm_launcher_says_what_to_change():
    k = kernels()
    x = rand(4, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="cast the weight"):
        k.rms_norm(x, rand(64, dtype=torch.float32), 1e-6)
    with pytest.raises(ValueError, match=r"shape \(hidden,\)"):
        k.rms_norm(x, rand(32, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="contiguous"):
        k.rms_norm(rand(64, 4, dtype=torch.bfloat16).t(), rand(64, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(ValueError, match="torch path"):
        k.rms_norm(rand(1, 16384), rand(16384), 1e-6)


# ---------------------------------------------------------------------------------------------------- rope_qk


@needs_kernels
@pytest.mark.parametrize("dtype,cos_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float16)])
@pytest.mark.parametrize("layout", ["transposed", "split", "contiguous"])
@pytest.mark.parametrize("N", [1, 7])
def test_rope_qk_equals_apply_rope_bit_for_bit(dtype, cos_dtype, layout, N):
    # (bf16, fp32): the autocast case, products promoted to fp32 and the result cast back
    B, H, H_kv, D = 3, 6, 2, 16  # GQA, a head count that is not a power of two
    q, k = qk_views(B, H, H_kv, N, D, dtype, layout, seed=N)
    cos, sin = cos_sin(B, N, D, cos_dtype, seed=N)
    got_q, got_k = kernels().rope_qk(q, k, cos, sin, dtype)
    want_q, want_k = apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype)
    for name, got, want in (("q", got_q, want_q), ("k", got_k, want_k)):
        d = ulps(got, want)
        assert torch.equal(got, want), f"{name}: {(d > 0).sum().item()} elements differ, max {d.max().item()} ulp"
        assert same_layout(got, want), f"{name}: layout {got.stride()}, torch's {want.stride()}"


@needs_kernels
def test_rope_qk_takes_broadcast_cos_and_a_head_dim_that_is_not_a_power_of_two():
    B, H, H_kv, N, D = 2, 4, 4, 5, 24  # D/2 = 12: a masked half
    q, k = qk_views(B, H, H_kv, N, D, torch.bfloat16, "transposed")
    cos, sin = cos_sin(1, N, D, torch.bfloat16)  # (1, 1, N, D): one position row for the whole batch
    got_q, got_k = kernels().rope_qk(q, k, cos, sin)
    assert torch.equal(got_q, apply_rope(q, cos, sin)) and torch.equal(got_k, apply_rope(k, cos, sin))


@needs_kernels
def test_rope_qk_output_works_downstream_like_torch():
    B, H, H_kv, N, D = 2, 4, 2, 3, 16
    q, k = qk_views(B, H, H_kv, N, D, torch.bfloat16, "transposed")
    cos, sin = cos_sin(B, N, D, torch.bfloat16)
    got_q, _ = kernels().rope_qk(q, k, cos, sin)
    want_q = apply_rope(q, cos, sin)
    # what LlamaAttention and the engine's callbacks do with q, k
    assert torch.equal(got_q.transpose(1, 2).reshape(B, N, H * D), want_q.transpose(1, 2).reshape(B, N, H * D))
    assert torch.equal(got_q[:, :, 0], want_q[:, :, 0]) and got_q[:, :, 0].stride(-1) == 1


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_rope_qk_writes_into_given_outputs_and_in_place(dtype):
    B, H, H_kv, N, D = 1, 4, 2, 9, 16
    q, k = qk_views(B, H, H_kv, N, D, dtype, "split", seed=3)  # views into one projection output
    cos, sin = cos_sin(1, N, D, dtype, seed=3)
    want_q, want_k = apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype)
    bq = torch.zeros(B, N, H, D, dtype=dtype, device=q.device).transpose(1, 2)  # token-major buffers
    bk = torch.zeros(B, N, H_kv, D, dtype=dtype, device=q.device).transpose(1, 2)
    got = kernels().rope_qk(q, k, cos, sin, dtype, out=(bq, bk))
    assert got[0] is bq and got[1] is bk and torch.equal(bq, want_q) and torch.equal(bk, want_k)
    got = kernels().rope_qk(q, k, cos, sin, dtype, out=(q, k))  # in place
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    with pytest.raises(ValueError, match="out must be"):
        kernels().rope_qk(q, k, cos, sin, dtype, out=(bk, bq))


# ---------------------------------------------------------------------------------------------------- silu_mul
@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(5, 2 * 24), (2, 3, 2 * 1536)])  # one partial block; two blocks per row
def test_silu_mul_equals_the_mlps_torch_code(dtype, shape):
    from lighthouse.ops.fused import silu_mul_ref

    x = rand(*shape, dtype=dtype, seed=7, scale=4.0)
    got, want = kernels().silu_mul(x), silu_mul_ref(x)
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    d = ulps(got, want)  # exp and the division round differently from torch's in the last fp32 bits
    if dtype == torch.float32:
        assert d.max().item() <= 8, d.max()
    else:  # the fp32 differences rarely survive the rounding to 16 bits
        assert d.max().item() <= 2 and (d > 0).float().mean().item() < 0.05, d.max()


@needs_kernels
def test_silu_mul_takes_a_row_slice_of_a_wider_output_and_says_what_to_change():
    from lighthouse.ops.fused import silu_mul_ref

    x = rand(6, 2 * 40, dtype=torch.bfloat16, seed=8)[1:4]
    assert torch.allclose(kernels().silu_mul(x).float(), silu_mul_ref(x).float(), atol=1e-2)
    with pytest.raises(ValueError, match="even"):
        kernels().silu_mul(x[:, :-1])
    with pytest.raises(ValueError, match="contiguous in the last dim"):
        kernels().silu_mul(rand(4, 64, dtype=torch.bfloat16)[:, ::2])


@needs_kernels
def test_rope_qk_launcher_says_what_to_change():
    k_ops = kernels()
    q, k = qk_views(2, 4, 2, 3, 16, torch.bfloat16, "contiguous")
    cos, sin = cos_sin(2, 3, 16, torch.float32)
    with pytest.raises(ValueError, match=r"\(B or 1, 1, N, D\)"):
        k_ops.rope_qk(q, k, cos[:, :, :2], sin[:, :, :2])
    with pytest.raises(ValueError, match="share a dtype"):
        k_ops.rope_qk(q, k.float(), cos, sin)
    with pytest.raises(ValueError, match="contiguous in the last dim"):
        k_ops.rope_qk(rand(2, 4, 3, 32, dtype=torch.bfloat16)[..., ::2], k, cos, sin)
    with pytest.raises(ValueError, match="even D"):
        k_ops.rope_qk(q[..., :15], k[..., :15], cos[..., :15], sin[..., :15])


# --------------------------------------------------------------------------------------------------- dispatch


def test_dispatch_on_cpu_is_the_old_model_code_bit_for_bit():
    x = rand(2, 9, 64, dtype=torch.bfloat16, device="cpu")
    w = rand(64, dtype=torch.bfloat16, seed=1, device="cpu")
    assert torch.equal(fused.rms_norm(x, w, 1e-6), old_rms_norm(x, w, 1e-6))
    q, k = qk_views(2, 4, 2, 9, 16, torch.bfloat16, "transposed")
    q, k = q.cpu(), k.cpu()
    cos, sin = cos_sin(2, 9, 16, torch.bfloat16, device="cpu")
    got_q, got_k = fused.rope_qk(q, k, cos, sin, torch.bfloat16)
    assert torch.equal(got_q, apply_rope(q, cos, sin).to(torch.bfloat16))
    assert torch.equal(got_k, apply_rope(k, cos, sin).to(torch.bfloat16))


@pytest.fixture
def spy_kernels(monkeypatch):
    """The dispatch believes every tensor is on the GPU, and its "kernels" record their calls (and compute the
    reference), so the choice itself is observable on the CPU without triton."""
    calls = []

    def rms(x, w, eps):
        calls.append("rms_norm")
        return fused.rms_norm_ref(x, w, eps)

    def rope(q, k, cos, sin, dtype=None, out=None):
        calls.append("rope_qk")
        assert out is None
        return fused.rope_qk_ref(q, k, cos, sin, dtype)

    def silu_mul(x):
        calls.append("silu_mul")
        return fused.silu_mul_ref(x)

    spy = SimpleNamespace(rms_norm=rms, rope_qk=rope, silu_mul=silu_mul, rms_norm_problem=lambda *a: None,
                          rope_qk_problem=lambda *a: None, silu_mul_problem=lambda *a: None)
    monkeypatch.setattr(fused, "_on_device", lambda t: True)
    monkeypatch.setattr(fused, "_kernels", lambda: spy)
    monkeypatch.delenv(fused.ENV, raising=False)
    return calls


def _run_both(x, w, q, k, cos, sin):
    fused.rms_norm(x, w, 1e-6)
    fused.rope_qk(q, k, cos, sin)


def test_autograd_never_takes_the_triton_path(spy_kernels, monkeypatch):
    model = LlamaForCausalLM(model_preset("tiny"))
    ids = torch.randint(0, 100, (2, 12))
    model(ids, labels=ids).loss.backward()  # parameters require grad: the torch path, and it differentiates
    assert spy_kernels == []
    assert model.model.layers[0].input_layernorm.weight.grad is not None
    x = rand(2, 3, 64, device="cpu").requires_grad_()
    q, k = qk_views(2, 4, 2, 3, 16, torch.float32, "transposed")
    cos, sin = cos_sin(2, 3, 16, torch.float32, device="cpu")
    _run_both(x, torch.ones(64), q.cpu(), k.cpu().requires_grad_(), cos, sin)  # an input that needs grad
    assert spy_kernels == []
    with torch.no_grad():  # inference: the kernels
        _run_both(x, torch.ones(64), q.cpu(), k.cpu(), cos, sin)
    assert spy_kernels == ["rms_norm", "rope_qk"]
    monkeypatch.setenv(fused.ENV, "0")  # the switch turns them off
    with torch.no_grad():
        _run_both(x, torch.ones(64), q.cpu(), k.cpu(), cos, sin)
    assert spy_kernels == ["rms_norm", "rope_qk"]


def test_model_inference_takes_the_fused_path_once_per_op(spy_kernels):
    cfg = model_preset("tiny")
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model(torch.randint(0, 100, (1, 5)))
    L = cfg.num_hidden_layers
    assert spy_kernels.count("rms_norm") == 2 * L + 1 and spy_kernels.count("rope_qk") == L


@needs_kernels
def test_model_logits_with_the_kernels_match_the_torch_path(monkeypatch):
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval().to(torch.bfloat16)
    ids = torch.randint(0, 100, (2, 16))
    positions = torch.stack([torch.arange(16), torch.arange(100, 116)])  # rows at different positions
    with torch.no_grad():
        want = model(ids, positions=positions, logits_to_keep=16).logits
        monkeypatch.setattr(fused, "_on_device", lambda t: True)  # the Triton path, interpreted on the CPU
        fused._kernels.cache_clear()
        assert not isinstance(fused._kernels(), str)
        got = model(ids, positions=positions, logits_to_keep=16).logits
    # RoPE is exact; RMSNorm's 1-ulp differences on a few elements propagate through two bf16 layers
    err = (got.float() - want.float()).abs()
    msg = f"max {err.max().item():.3e}, mean {err.mean().item():.3e}"
    assert err.max().item() < 0.1 and err.mean().item() < 2e-3, msg
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() > 0.95


# -------------------------------------------------------------------------------------------------------- GPU


@needs_gpu
def test_dispatch_on_gpu_matches_the_reference_at_model_shapes():
    B, N, hidden, H, H_kv, D = 4, 256, 4096, 32, 8, 128
    x = rand(B, N, hidden, dtype=torch.bfloat16, scale=2.0)
    w = (1 + rand(hidden, seed=1, scale=0.3)).to(torch.bfloat16)
    q, k = qk_views(B, H, H_kv, N, D, torch.bfloat16, "split")
    cos, sin = cos_sin(B, N, D, torch.bfloat16)
    with torch.no_grad():
        got, (got_q, got_k) = fused.rms_norm(x, w, 1e-5), fused.rope_qk(q, k, cos, sin)
    d = ulps(got, old_rms_norm(x, w, 1e-5))  # 1 ulp of h, times |w| < 2: see the CPU test
    assert d.max().item() <= 2 and (d > 0).float().mean().item() < 0.02, f"max {d.max().item()} ulp"
    ones = torch.ones_like(w)
    assert ulps(fused.rms_norm(x, ones, 1e-5), old_rms_norm(x, ones, 1e-5)).max().item() <= 1
    assert torch.equal(got_q, apply_rope(q, cos, sin)) and torch.equal(got_k, apply_rope(k, cos, sin))
    q, k, cos, sin = q.float(), k.float(), cos.float(), sin.float()  # fp32: exact only without fma contraction
    with torch.no_grad():
        got_q, got_k = fused.rope_qk(q, k, cos, sin)
    assert torch.equal(got_q, apply_rope(q, cos, sin)) and torch.equal(got_k, apply_rope(k, cos, sin))


@needs_gpu
def test_kernels_replay_in_a_cuda_graph():
    x = rand(8, 1, 4096, dtype=torch.bfloat16)
    w = torch.ones(4096, dtype=torch.bfloat16, device=DEV)
    q, k = qk_views(8, 32, 8, 1, 128, torch.bfloat16, "transposed")
    cos, sin = cos_sin(8, 1, 128, torch.bfloat16)
    with torch.no_grad():
        for _ in range(2):  # compile outside the capture
            fused.rms_norm(x, w, 1e-5), fused.rope_qk(q, k, cos, sin)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, (out_q, _) = fused.rms_norm(x, w, 1e-5), fused.rope_qk(q, k, cos, sin)
    x.copy_(rand(8, 1, 4096, dtype=torch.bfloat16, seed=5))
    new_cos, new_sin = cos_sin(8, 1, 128, torch.bfloat16, seed=6)
    cos.copy_(new_cos), sin.copy_(new_sin)
    graph.replay()
    assert ulps(out, old_rms_norm(x, w, 1e-5)).max().item() <= 1
    assert torch.equal(out_q, apply_rope(q, cos, sin))
