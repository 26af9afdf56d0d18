"""The pure-PyTorch Lighthouse op: semantics, causality, shapes, gradients, errors.

The op's equality with the official implementation is checked on the GPU by test_matches_official_gpu.py (when the
official code is laid out beside the repository); here a literal, loop-by-loop restatement of the algorithm stands in
for it.
"""

from __future__ import annotations

import math

import pytest
import torch

from lighthouse import lighthouse_attention
from lighthouse.ops import lighthouse_attention_ref, lighthouse_select, selected_length
from lighthouse.ops.bitonic import bitonic_sort_desc
from lighthouse.ops.lighthouse_ref import _lighthouse_padded, causal_attention, level_offsets
from lighthouse.ops.validation import padded_len

CONFIGS = [  # (N, levels, pooling_factor, topk)
    (1024, 3, 2, 128),
    (2048, 2, 4, 256),
    (4096, 3, 4, 128),
]


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def qkv(B, H, N, D, H_kv=None, dtype=torch.float32, seed=0):
    H_kv = H_kv or H
    return rand(B, H, N, D, dtype=dtype, seed=seed), rand(B, H_kv, N, D, dtype=dtype, seed=seed + 1), rand(B, H_kv, N, D, dtype=dtype, seed=seed + 2)


def literal_lighthouse(q, k, v, levels, p, topk):
    """The algorithm written out loop by loop from LIGHTHOUSE.md section A (sets, not networks; no ties)."""
    B, H, N, D = q.shape
    out = torch.zeros_like(q)
    tiles = topk // 128
    coarse = N // p ** (levels - 1)
    span = coarse // tiles
    for b in range(B):
        for h in range(H):
            s_q0, s_k0 = q[b, h].norm(dim=-1), k[b, h].norm(dim=-1)
            entries = []  # (key, level, window index)
            for t in range(tiles):
                cands = list(range(t * span, (t + 1) * span))
                for level in range(levels - 1, 0, -1):
                    c = p**level
                    sq = {i: s_q0[i * c : (i + 1) * c].max().item() for i in cands}
                    sk = {i: s_k0[i * c : (i + 1) * c].max().item() for i in cands}
                    by_q = sorted(cands, key=lambda i: -sq[i])[:64]
                    rest = [i for i in cands if i not in set(by_q)]
                    by_k = sorted(rest, key=lambda i: -sk[i])[:64]
                    refined = set(by_q) | set(by_k)
                    for i in cands:
                        entries.append((c * (i + 1) - 2.0**-level if i in refined else c * i, level, i))
                    cands = [ch for i in sorted(refined) for ch in range(i * p, i * p + p)]
                entries += [(float(i), 0, i) for i in cands]
            entries.sort()

            def pooled(x, level, i):
                c = p**level
                return x[b, h, i * c : (i + 1) * c].mean(0)

            qs = torch.stack([pooled(q, lv, i) for _, lv, i in entries])
            ks = torch.stack([pooled(k, lv, i) for _, lv, i in entries])
            vs = torch.stack([pooled(v, lv, i) for _, lv, i in entries])
            scores = qs @ ks.T / math.sqrt(D)
            S = len(entries)
            scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
            att = scores.softmax(-1) @ vs
            for n, (_, lv, i) in enumerate(entries):
                c = p**lv
                for pos in range(i * c + c - 1, min(i * c + 2 * c - 1, N)):
                    out[b, h, pos] += att[n]
    return out


@pytest.mark.parametrize("N,levels,p,topk", CONFIGS[:2])
def test_matches_literal_restatement_of_the_algorithm(N, levels, p, topk):
    q, k, v = qkv(1, 2, N, 8, dtype=torch.float64, seed=N)
    ours = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    ref = literal_lighthouse(q, k, v, levels, p, topk)
    err = (ours - ref).abs().max().item()
    assert err < 1e-10, f"max abs diff {err}"


def test_levels_one_is_dense_causal_attention():
    q, k, v = qkv(2, 4, 300, 16)
    out = lighthouse_attention(q, k, v, levels=1, pooling_factor=4, topk=128)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, dense, atol=1e-6), (out - dense).abs().max()


@pytest.mark.parametrize("N,levels,p,topk", CONFIGS)
@pytest.mark.parametrize("t_frac", [0.3, 0.77])
def test_future_values_never_change_past_outputs(N, levels, p, topk, t_frac):
    q, k, v = qkv(2, 2, N, 16, seed=t_frac.hex().__hash__() % 1000)
    t = int(N * t_frac)
    out = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    v2 = v.clone()
    v2[:, :, t:] = torch.randn_like(v2[:, :, t:]) * 5
    out2 = lighthouse_attention(q, k, v2, levels=levels, pooling_factor=p, topk=topk)
    assert torch.equal(out[:, :, :t], out2[:, :, :t])
    assert not torch.equal(out[:, :, t:], out2[:, :, t:])


@pytest.mark.parametrize("N,levels,p,topk", CONFIGS)
def test_norm_preserving_future_qk_changes_never_change_past_outputs(N, levels, p, topk):
    q, k, v = qkv(1, 2, N, 16, seed=7)
    t = N // 2 + 5
    out = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    flip = torch.where(torch.rand(16, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    q2, k2 = q.clone(), k.clone()
    q2[:, :, t:] *= flip  # sign flips keep every norm, so the norm scorer's selection cannot change
    k2[:, :, t:] *= flip.flip(0)
    out2 = lighthouse_attention(q2, k2, v, levels=levels, pooling_factor=p, topk=topk)
    assert torch.equal(out[:, :, :t], out2[:, :, :t])


def test_selection_looks_at_the_whole_tile_including_future_tokens():
    """Documented property: future q/k norms inside a tile decide which earlier windows are refined."""
    N, levels, p, topk = 4096, 3, 4, 256  # 2 tiles of 2048 positions
    q, k, v = qkv(1, 1, N, 16, seed=3)
    base = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    q2, k2 = q.clone(), k.clone()
    q2[:, :, 1500:2048] *= 10.0  # louder queries late in tile 0 steal refinement budget
    k2[:, :, 1500:2048] *= 10.0
    out = lighthouse_attention(q2, k2, v, levels=levels, pooling_factor=p, topk=topk)
    assert not torch.equal(out[:, :, :1500], base[:, :, :1500]), "selection should depend on the whole tile"
    # across a tile boundary nothing leaks: tile 1 changes never touch tile 0's outputs
    q3, k3 = q.clone(), k.clone()
    q3[:, :, 2048:] *= 10.0
    k3[:, :, 2048:] *= 10.0
    out3 = lighthouse_attention(q3, k3, v, levels=levels, pooling_factor=p, topk=topk)
    assert torch.equal(out3[:, :, :2048], base[:, :, :2048])


@pytest.mark.parametrize("N,levels,p,topk", CONFIGS)
def test_selected_length_order_and_coverage(N, levels, p, topk):
    q, k, v = qkv(2, 3, N, 8, seed=11)
    idx = lighthouse_select(q, k, levels=levels, pooling_factor=p, topk=topk)
    S = N // p ** (levels - 1) + (levels - 1) * p * topk
    assert idx.shape == (2, 3, S) == (2, 3, selected_length(N, levels, p, topk))
    # decode every entry's window; the causal order needs non-decreasing window ends
    offs = level_offsets(N, levels, p) + [10**12]
    for row in idx.reshape(-1, S):
        level = torch.bucketize(row, torch.tensor(offs), right=True) - 1
        c = torch.tensor(p) ** level
        end = (row - torch.tensor(offs)[level] + 1) * c - 1
        assert bool((end[1:] >= end[:-1]).all()), "sorted order must be causal"
        assert row.unique().numel() == S
    out = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    first = p ** (levels - 1) - 1
    assert bool((out[:, :, first:].abs().sum(-1) > 0).all()), "every position >= p^(L-1)-1 receives output"


def test_gqa_equals_explicitly_repeated_kv():
    q, k, v = qkv(1, 4, 1024, 8, H_kv=2, seed=5)
    out = lighthouse_attention(q, k, v, levels=3, pooling_factor=2, topk=128)
    rep = lighthouse_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), levels=3, pooling_factor=2, topk=128)
    assert torch.equal(out, rep)


def test_gradcheck_float64():
    q, k, v = (x.requires_grad_(True) for x in qkv(1, 1, 256, 4, dtype=torch.float64, seed=2))
    fn = lambda a, b, c: lighthouse_attention(a, b, c, levels=2, pooling_factor=2, topk=128)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_flow_to_q_k_v():
    q, k, v = (x.requires_grad_(True) for x in qkv(1, 2, 1024, 8, seed=4))
    lighthouse_attention(q, k, v, levels=3, pooling_factor=2, topk=128).square().sum().backward()
    for x in (q, k, v):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dilated_scorer_runs_and_later_tiles_never_change_earlier_ones():
    # the dilated scores read V too, so V changes can move the selection inside a tile; across tiles they cannot
    N, kw = 4096, dict(levels=3, pooling_factor=4, topk=256, scorer="dilated")  # two tiles of 2048
    q, k, v = qkv(1, 2, N, 8, seed=9)
    out = lighthouse_attention(q, k, v, **kw)
    v2 = v.clone()
    v2[:, :, 2048:] = torch.randn_like(v2[:, :, 2048:])
    out2 = lighthouse_attention(q, k, v2, **kw)
    assert torch.equal(out[:, :, :2048], out2[:, :, :2048])
    assert not torch.equal(out, lighthouse_attention(q, k, v, levels=3, pooling_factor=4, topk=256))


def test_bf16_output_is_close_to_fp32_math_over_the_same_selection():
    from lighthouse.ops.lighthouse_ref import _select_padded, attend_selected

    q, k, v = (x.bfloat16() for x in qkv(1, 2, 1024, 16, seed=12))
    out16 = lighthouse_attention(q, k, v, levels=3, pooling_factor=2, topk=128)
    assert out16.dtype == torch.bfloat16
    sel = _select_padded(q, k, v, 1024, 3, 2, 128, "norm")
    ref = attend_selected(q.float(), k.float(), v.float(), sel, 3, 2)
    rel = ((out16.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, rel


# ------------------------------------------------------------------------------------- length rule


def test_unaligned_length_pads_and_padding_never_changes_outputs():
    N, levels, p, topk = 1000, 3, 2, 128  # minimum 512; runs at padded length 1024
    assert padded_len(N, levels, p, topk) == 1024
    q, k, v = qkv(1, 2, N, 8, seed=21)
    out = lighthouse_attention(q, k, v, levels=levels, pooling_factor=p, topk=topk)
    assert out.shape == (1, 2, N, 8)
    outs = []
    for fill in ("zeros", "random", "huge"):
        pad = torch.zeros(1, 2, 24, 8) if fill == "zeros" else torch.randn(1, 2, 24, 8) * (1 if fill == "random" else 1e3)
        qp, kp, vp = (torch.cat([x, pad], 2) for x in (q, k, v))
        outs.append(_lighthouse_padded(qp, kp, vp, N, levels, p, topk, "norm")[:, :, :N])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.allclose(outs[0], out.float())


def test_too_short_sequence_names_the_minimum():
    q, k, v = qkv(1, 1, 500, 8)
    with pytest.raises(ValueError, match="minimum is 512"):
        lighthouse_attention(q, k, v, levels=3, pooling_factor=2, topk=128)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(levels=3, pooling_factor=3, topk=128), "power of two"),
        (dict(levels=3, pooling_factor=2, topk=100), "multiple of 128"),
        (dict(levels=0, pooling_factor=2, topk=128), "levels must be"),
        (dict(levels=3, pooling_factor=2, topk=128, scorer="gla"), "scorer must be one of"),
        (dict(levels=2, pooling_factor=128, topk=128), "topk/2 must be >= pooling_factor"),
    ],
)
def test_invalid_configuration_raises_value_error(kwargs, match):
    q, k, v = qkv(1, 1, 1024, 8)
    with pytest.raises(ValueError, match=match):
        lighthouse_attention(q, k, v, **kwargs)


def test_invalid_tensors_raise_value_error():
    kw = dict(levels=3, pooling_factor=2, topk=128)
    q, k, v = qkv(1, 3, 1024, 8, H_kv=2)
    with pytest.raises(ValueError, match="multiple of the K/V heads"):
        lighthouse_attention(q, k, v, **kw)
    q, k, v = qkv(1, 2, 1024, 8)
    with pytest.raises(ValueError, match="same shape"):
        lighthouse_attention(q, k, v[:, :, :512], **kw)
    with pytest.raises(ValueError, match="one dtype"):
        lighthouse_attention(q, k.double(), v.double(), **kw)
    with pytest.raises(ValueError, match="4 dimensions"):
        lighthouse_attention(q[0], k[0], v[0], **kw)
    with pytest.raises(ValueError, match=r"\(B, H_kv, N, D\)"):
        lighthouse_attention(q, k[..., :4], v[..., :4], **kw)


# ---------------------------------------------------------------------------------- building blocks


def test_bitonic_network_sorts_descending_and_permutes():
    s = torch.randint(0, 8, (64, 128)).float()  # many ties
    ids = torch.arange(128).expand(64, 128)
    out_s, out_i = bitonic_sort_desc(s, ids)
    assert torch.equal(out_s, s.sort(-1, descending=True).values)
    assert torch.equal(out_i.sort(-1).values, ids)
    assert torch.equal(s.gather(1, out_i), out_s)


def test_attention_with_cache_is_bottom_right_causal():
    from lighthouse.ops import attention_with_cache

    q, k, v = qkv(1, 4, 50, 8, H_kv=2, seed=3)
    full = causal_attention(q, k, v)
    for nq in (1, 7):
        part = attention_with_cache(q[:, :, -nq:], k, v)
        assert torch.allclose(part, full[:, :, -nq:], atol=1e-6)
    with pytest.raises(ValueError):
        attention_with_cache(q, k[:, :, :10], v[:, :, :10])


def test_reference_is_the_public_op_on_cpu():
    q, k, v = qkv(1, 2, 1024, 8)
    a = lighthouse_attention(q, k, v, levels=3, pooling_factor=2, topk=128)
    b = lighthouse_attention_ref(q, k, v, levels=3, pooling_factor=2, topk=128)
    assert torch.equal(a, b)


def test_decode_attention_matches_sdpa_with_gqa_and_mask():
    from lighthouse.ops.attention import decode_attention

    q, k, v = qkv(2, 8, 1, 16, seed=31)[0], rand(2, 2, 300, 16, seed=32), rand(2, 2, 300, 16, seed=33)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1))
    assert torch.allclose(decode_attention(q, k, v), ref, atol=1e-5)
    mask = torch.rand(1, 8, 1, 300, generator=torch.Generator().manual_seed(0)) < 0.7
    ref_m = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask
    )
    assert torch.allclose(decode_attention(q, k, v, attn_mask=mask), ref_m, atol=1e-5)
