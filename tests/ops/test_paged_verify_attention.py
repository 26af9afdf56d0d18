"""Paged attention with Q queries per row (speculative decoding's verify step): query i of a row attends the
row's entries up to seq_len - Q + i, so it must equal a one-query call at that length. Checked for the torch
reference against the independent float64 spec, and for the Triton kernel (CPU interpreter or a GPU) against the
reference, full-cache and per-query-head rows mixed, with holes, split or not."""

from __future__ import annotations

import pytest
import torch

from lighthouse.ops import paged_decode_attention, paged_decode_attention_ref
from tests.ops.test_paged_attention import DEV, contiguous_spec, diff, make_case, needs_triton, poison_unattended

LENS = [0, 2, 37, 16, 50, 5]  # entries of each row counting its Q new ones (rows shorter than Q: padded queries)
PER = [0, 1, 1, 0, 0, 1]


def verify_case(Q: int, *, H=8, H_kv=2, holes=True, dtype=torch.float32, device="cpu", seed=0):
    c = make_case(LENS, PER, H=H, H_kv=H_kv, holes=holes, dtype=dtype, device=device, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    c["q"] = torch.randn(len(LENS), H, Q, c["q"].shape[-1], generator=g).to(device=device, dtype=dtype)
    return c


def one_query_spec(c, Q):
    """(B, H, Q, D) float64: query i as its own one-query case at length seq_len - Q + 1 + i (0 when negative)."""
    outs = []
    for i in range(Q):
        lens = (c["seq_lens"].cpu() - Q + 1 + i).clamp(min=0).to(torch.int32).to(c["seq_lens"].device)
        outs.append(contiguous_spec(dict(c, q=c["q"][:, :, i], seq_lens=lens)))
    return torch.stack(outs, dim=2)


@pytest.mark.parametrize("Q", [1, 3, 5])
@pytest.mark.parametrize("H,H_kv", [(8, 2), (4, 4)])
def test_reference_query_i_attends_causally_among_the_rows_last_q_entries(Q, H, H_kv):
    c = verify_case(Q, H=H, H_kv=H_kv, seed=Q + H)
    got = paged_decode_attention_ref(**c)
    assert got.shape == c["q"].shape
    mx, mean = diff(got, one_query_spec(c, Q))
    assert mx < 1e-5, f"max {mx:.2e} mean {mean:.2e}"
    assert torch.equal(got[0], torch.zeros_like(got[0])), "a row of length 0 outputs zeros"


def test_reference_with_q_of_one_equals_the_one_query_call():
    c = verify_case(1)
    got = paged_decode_attention_ref(**c)
    assert torch.equal(got[:, :, 0], paged_decode_attention_ref(**dict(c, q=c["q"][:, :, 0])))


def test_reference_never_reads_entries_past_the_rows_length():
    c = verify_case(4)
    assert torch.equal(paged_decode_attention_ref(**poison_unattended(c)), paged_decode_attention_ref(**c))


@needs_triton
@pytest.mark.parametrize("num_splits,tile", [(1, 16), (3, 64)])
@pytest.mark.parametrize("Q,H,H_kv", [(3, 8, 2), (5, 4, 4), (2, 4, 1)])
def test_triton_verify_fp32_matches_the_reference(Q, H, H_kv, num_splits, tile, monkeypatch):
    from lighthouse.ops.triton import paged_decode as pd

    monkeypatch.setattr(pd, "TILE", tile)
    c = verify_case(Q, H=H, H_kv=H_kv, device=DEV, seed=11)
    got = paged_decode_attention(**c, num_splits=num_splits, backend="triton")
    want = paged_decode_attention_ref(**c)
    mx, mean = diff(got, want)
    assert got.shape == c["q"].shape and mx < 1e-5, f"max {mx:.2e} mean {mean:.2e}"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_triton_verify_16_bit_passes_the_flash_attention_rule(dtype):
    c = verify_case(4, dtype=dtype, device=DEV, seed=5)
    exact = one_query_spec(c, 4)
    got = paged_decode_attention(**c, num_splits=2, backend="triton")
    ref = paged_decode_attention_ref(**c)
    (mx, mean), (rmx, rmean) = diff(got, exact), diff(ref, exact)
    assert mx <= 2 * rmx + 1e-6 and mean <= 2 * rmean + 1e-7, \
        f"triton max {mx:.2e} mean {mean:.2e} vs reference max {rmx:.2e} mean {rmean:.2e}"


def _verify_vs_one_query(c, Q) -> bool:
    """Whether every query i of a verify launch is bitwise the one-query launch at its length, in the full batch
    and in a smaller one over the same table width."""
    got = paged_decode_attention(**c, backend="triton")
    same = True
    for i in range(Q):
        lens = (c["seq_lens"] - Q + 1 + i).clamp(min=0).to(torch.int32)
        one = paged_decode_attention(**dict(c, q=c["q"][:, :, i].contiguous(), seq_lens=lens), backend="triton")
        rows = [0, 2]
        sub = dict(c, q=c["q"][rows, :, i].contiguous(), seq_lens=lens[rows], block_tables=c["block_tables"][rows],
                   per_head=c["per_head"][rows])
        same &= torch.equal(got[:, :, i], one) and torch.equal(paged_decode_attention(**sub, backend="triton"),
                                                                one[rows])
    assert diff(got, paged_decode_attention_ref(**c))[0] < 1e-5
    return same


@needs_triton
@pytest.mark.parametrize("Q", [3, 5])
def test_with_fixed_chunks_a_verify_query_sums_exactly_as_the_one_query_step_at_its_length(Q, monkeypatch):
    """paged_decode.FIXED_CHUNK (the experiment for greedy identity under speculation): the split-K boundaries no
    longer follow the batch, each row's length or the queries per row, so query i of a verify launch is bitwise the
    one-query launch at length seq_len - Q + 1 + i, alone or in a smaller batch (same table width, as the engine's
    inputs). Without it the split count follows the batch (64 SMs pretended here), and the sums differ."""
    from lighthouse.ops.triton import paged_decode as pd

    monkeypatch.setattr(pd, "_sm_count", lambda device: 64)
    c = make_case([700, 9, 433, 260], [0, 1, 0, 1], H=4, H_kv=2, device=DEV, seed=5)  # several chunks a row
    c["q"] = torch.randn(4, 4, Q, c["q"].shape[-1], generator=torch.Generator().manual_seed(6)).to(DEV)
    if Q == 5:  # the control (this data at Q = 3 happens to round alike either way)
        assert not _verify_vs_one_query(c, Q), "default splits sum in another order"
    monkeypatch.setattr(pd, "FIXED_CHUNK", 2 * pd.TILE)
    assert _verify_vs_one_query(c, Q)
