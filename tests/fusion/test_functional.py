"""fusion.functional: the folding maths is exact and differentiable."""

from __future__ import annotations

import pytest
import torch

from torchcompress.errors import (
    ShapeError,
)
from torchcompress.fusion import bn_scale_shift, fold_bn_weights


def test_fold_bn_weights_formula() -> None:
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    gamma, beta, eps = torch.randn(4), torch.randn(4), 1e-3
    fw, fb = fold_bn_weights(w, b, mean, var, eps, gamma, beta)
    s = gamma / torch.sqrt(var + eps)
    torch.testing.assert_close(fw, w * s[:, None, None, None])
    torch.testing.assert_close(fb, (b - mean) * s + beta)
    # no bias, no affine
    fw0, fb0 = fold_bn_weights(w, None, mean, var, eps)
    s0 = 1 / torch.sqrt(var + eps)
    torch.testing.assert_close(fw0, w * s0[:, None, None, None])
    torch.testing.assert_close(fb0, -mean * s0)
    scale, shift = bn_scale_shift(mean, var, eps, gamma, beta)
    torch.testing.assert_close(scale, s)
    torch.testing.assert_close(shift, beta - mean * s)
    with pytest.raises(ShapeError, match="running_mean"):
        fold_bn_weights(w, b, torch.zeros(5), var, eps)


def test_fold_bn_weights_is_differentiable_and_keeps_dtype() -> None:
    w = torch.randn(3, 2, requires_grad=True)
    gamma = torch.randn(3, requires_grad=True)
    fw, fb = fold_bn_weights(w, None, torch.zeros(3), torch.ones(3), 1e-5, gamma, torch.zeros(3))
    (fw.sum() + fb.sum()).backward()
    assert w.grad is not None and gamma.grad is not None
    fw16, _ = fold_bn_weights(w.detach().half(), None, torch.zeros(3), torch.ones(3), 1e-5)
    assert fw16.dtype == torch.float16
