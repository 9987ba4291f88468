"""Shared helpers of the fusion tests."""

from __future__ import annotations

import torch
from torch import nn

import torchcompress as tc

_BN = nn.modules.batchnorm._BatchNorm


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


def check_fused(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    model.eval()
    with torch.no_grad():
        ref = model(x)
    out_model = tc.fuse(model, **kw)
    assert out_model is model
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))
    return model


def hide_from_fx(monkeypatch) -> None:
    """Make torch.fx fail on every model, so fuse must follow a recorded forward."""

    def untraceable(model):
        raise RuntimeError("fx disabled by the test")

    monkeypatch.setattr(tc.fusion.analysis, "_fx_facts", untraceable)
