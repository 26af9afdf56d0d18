"""token_cross_entropy (flat rows) equals PyTorch's (B, V, N) form, value and gradient, with ignored targets."""

import pytest
import torch
import torch.nn.functional as F

from lighthouse.ops.cross_entropy import IGNORE_INDEX, token_cross_entropy


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_class_dim_form(reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 37, 53, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 53, (2, 37), generator=g)
    target[0, :5] = IGNORE_INDEX
    target[1, -3:] = IGNORE_INDEX
    ours = token_cross_entropy(logits, target, reduction=reduction)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction=reduction)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    if reduction == "none":
        assert (ours[0, :5] == 0).all() and (ours[1, -3:] == 0).all()
