"""Triton missing is expected on a CPU-only host (logged at DEBUG) and a lost fast path where CUDA is there
(WARNING); the three dispatch points say so the same way."""

from __future__ import annotations

import logging

import pytest
import torch

from lighthouse.ops import dispatch, fused
from lighthouse.ops import paged_attention as pa
from lighthouse.ops.triton_import import fallback_level, import_kernels
from lighthouse.ops.validation import min_seq_len

MISSING = "triton unavailable (ModuleNotFoundError: No module named 'triton')"


def _lighthouse():
    n = min_seq_len(2, 4, 128)
    q = k = v = torch.randn(1, 2, n, 16)
    dispatch.lighthouse_attention(q, k, v, levels=2, pooling_factor=4, topk=128)


def _fused(monkeypatch):
    monkeypatch.setattr(fused, "_on_device", lambda x: True)  # as if on CUDA: the only place fused looks for Triton
    with torch.no_grad():
        fused.rms_norm(torch.randn(3, 16), torch.ones(16), 1e-5)


def _paged():
    q = torch.randn(1, 2, 16)
    cache = torch.randn(2, 16, 2, 16)
    one = torch.ones(1, dtype=torch.int32)
    pa.paged_decode_attention(q, cache, cache, one[:, None], one * 4, one * 0)


@pytest.fixture
def triton_missing(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton_module", lambda: MISSING)
    monkeypatch.setattr(fused, "_kernels", lambda: MISSING)
    monkeypatch.setattr(pa, "_triton_impl", lambda: MISSING)
    caches = (dispatch._log_choice, fused._log_fallback, pa._log_choice)  # each says a choice once
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("op", ["lighthouse", "fused", "paged"])
@pytest.mark.parametrize("cuda", [False, True])
def test_triton_missing_is_debug_without_cuda_and_a_warning_with_it(triton_missing, monkeypatch, caplog, op, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with caplog.at_level(logging.DEBUG, logger="lighthouse.ops"):
        _lighthouse() if op == "lighthouse" else _fused(monkeypatch) if op == "fused" else _paged()
    said = [r.levelno for r in caplog.records if "triton unavailable" in r.getMessage()]
    assert said == [logging.WARNING if cuda else logging.DEBUG]


def test_other_choices_stay_info_and_a_failed_import_says_why():
    assert fallback_level("tensors on cpu") == logging.INFO
    assert import_kernels("no_such_module_anywhere").startswith("triton unavailable (ModuleNotFoundError")
