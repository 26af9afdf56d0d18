"""The CPU row path of paged decode attention (paged_attention_rows.py) equals the reference: full-cache and
per-query-head rows mixed, GQA and not, holes, Q queries per row (the verify step), strided pools, whatever
unattended slots hold (NaN included), and 16-bit inputs."""

from __future__ import annotations

import pytest
import torch

from lighthouse.ops import paged_decode_attention_ref
from lighthouse.ops.paged_attention_rows import paged_decode_attention_rows
from tests.ops.test_paged_attention import make_case, poison_unattended
from tests.ops.test_paged_verify_attention import LENS, PER, verify_case


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("H,H_kv", [(8, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("layout", ["pool", "strided", "plain"])
def test_rows_equal_the_reference(H, H_kv, holes, layout):
    c = make_case([5, 0, 33, 17, 64, 1], [0, 1, 1, 0, 1, 0], H=H, H_kv=H_kv, holes=holes, layout=layout,
                  seed=H + H_kv + holes)
    close(paged_decode_attention_rows(**c), paged_decode_attention_ref(**c))
    close(paged_decode_attention_rows(**c, scale=0.3), paged_decode_attention_ref(**c, scale=0.3))


@pytest.mark.parametrize("Q", [1, 3, 5])
def test_rows_with_several_queries_per_row_equal_the_reference(Q):
    c = verify_case(Q, seed=Q)
    got = paged_decode_attention_rows(**c)
    assert got.shape == c["q"].shape
    close(got, paged_decode_attention_ref(**c))
    short = [b for b, n in enumerate(LENS) if n < Q]  # queries with no entry to attend: zeros
    for b in short:
        assert (got[b, :, : Q - LENS[b]] == 0).all()
    assert PER  # the verify cases mix both row kinds


def test_rows_ignore_whatever_unattended_slots_hold():
    c = make_case([7, 30, 12], [1, 0, 1], holes=True, spare_blocks=2)
    got = paged_decode_attention_rows(**poison_unattended(c))
    assert torch.isfinite(got).all()
    close(got, paged_decode_attention_ref(**c))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rows_in_16_bit_equal_the_reference(dtype):
    c = make_case([9, 40, 3], [0, 1, 0], holes=True, dtype=dtype)
    got = paged_decode_attention_rows(**c)
    assert got.dtype == dtype
    close(got.float(), paged_decode_attention_ref(**c).float(), tol=1e-2)


def test_rows_refuse_a_row_longer_than_its_table():
    c = make_case([5, 9], [0, 1])
    c["seq_lens"] = torch.tensor([5, 9 + 64], dtype=torch.int32)
    with pytest.raises(ValueError, match="grow block_tables"):
        paged_decode_attention_rows(**c)
