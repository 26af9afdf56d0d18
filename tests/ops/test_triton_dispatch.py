"""The dispatch point: which backend runs, overrides, and that both backends compute the same op."""

from __future__ import annotations

import logging
import os

import pytest
import torch

import lighthouse.ops as ops
from lighthouse.ops import dispatch


def _qkv(n=256, d=16, h=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, h, n, d, generator=g) for _ in range(3))


KW = dict(levels=2, pooling_factor=2, topk=128)


def test_public_binding_is_the_dispatcher_and_the_reference_stays_exported():
    assert ops.lighthouse_attention is dispatch.lighthouse_attention
    assert ops.lighthouse_attention_ref is not ops.lighthouse_attention


def test_cpu_tensors_run_the_reference_by_default(monkeypatch):
    monkeypatch.delenv(dispatch.ENV, raising=False)
    q, k, v = _qkv()
    assert dispatch.choose_backend(q, 2)[0] == "torch"
    assert torch.equal(ops.lighthouse_attention(q, k, v, **KW), ops.lighthouse_attention_ref(q, k, v, **KW))


def test_environment_and_argument_overrides(monkeypatch):
    q, _, _ = _qkv()
    monkeypatch.setenv(dispatch.ENV, "torch")
    assert dispatch.choose_backend(q, 2) == ("torch", "requested")
    monkeypatch.setenv(dispatch.ENV, "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.choose_backend(q, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.choose_backend(q, 2, backend="cuda")


def test_invalid_arguments_raise_value_errors_on_every_backend():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="topk"):
        ops.lighthouse_attention(q, k, v, levels=2, pooling_factor=2, topk=100)
    with pytest.raises(ValueError, match="minimum"):
        ops.lighthouse_attention(q[:, :, :100], k[:, :, :100], v[:, :, :100], **KW)


def test_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.delenv(dispatch.ENV, raising=False)
    dispatch._log_choice.cache_clear()
    q, k, v = _qkv()
    with caplog.at_level(logging.INFO, logger="lighthouse.ops.dispatch"):
        ops.lighthouse_attention(q, k, v, **KW)
        ops.lighthouse_attention(q, k, v, **KW)
    assert sum("lighthouse attention backend" in r.message for r in caplog.records) == 1


interp = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0") or not dispatch.triton_available(),
    reason="needs triton and TRITON_INTERPRET=1",
)


@interp
def test_forced_triton_on_cpu_matches_the_reference_under_the_interpreter():
    q, k, v = _qkv(seed=3)
    got = ops.lighthouse_attention(q, k, v, backend="triton", **KW)
    assert torch.allclose(got, ops.lighthouse_attention_ref(q, k, v, **KW), atol=1e-6, rtol=1e-5)
    idx = dispatch.lighthouse_select(q, k, backend="triton", **KW)
    assert torch.equal(idx, ops.lighthouse_select(q, k, **KW))


@interp
def test_levels_one_is_dense_attention_on_the_triton_path():
    q, k, v = _qkv(n=64)
    from lighthouse.ops.attention import causal_attention

    got = ops.lighthouse_attention(q, k, v, levels=1, pooling_factor=2, topk=128, backend="triton")
    assert torch.equal(got, causal_attention(q, k, v))


@interp
def test_custom_ops_have_fake_implementations_for_tracing():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from lighthouse.ops.triton.ops import gather_op, pool_op, scatter_op, select_op

    with FakeTensorMode():
        q = torch.empty(2, 4, 1000, 32, dtype=torch.bfloat16)
        k = torch.empty(2, 2, 1000, 32, dtype=torch.bfloat16)
        cq, sq = pool_op(q, 3, 2, 128, 1)
        ck, sk = pool_op(k, 3, 2, 128, 1)
        assert cq.shape == (2, 4, 256, 32) and sq.shape == (2, 4, 512 + 256)
        idx, inv = select_op(sq, sk, 1000, 3, 2, 128, 2)
        assert idx.shape == (2, 4, 256 + 2 * 2 * 128) and idx.dtype == torch.int64
        qs, ks, vs = gather_op(q, k, k, cq, ck, ck, idx, inv, 3, 2, 128)
        out = scatter_op(qs, inv, idx, 1000, 3, 2, 128)
        assert out.shape == q.shape and out.dtype == q.dtype


def test_bench_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.perf.attention_bench import _plot

    rows = [dict(method=m, N=n, fwd_ms=n / 1e3 * f, fwdbwd_ms=n / 5e2 * f) for m, f in (("a", 1), ("b", 2)) for n in (8192, 16384)]
    _plot(rows, str(tmp_path / "x.png"), "test")
    assert (tmp_path / "x.png").stat().st_size > 1000
