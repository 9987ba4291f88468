"""quant.siblings: Linear layers reading the same input share one GEMM, exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn

import torchcompress as tc

from .test_convert import _pair


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(32, 32)
        self.k = nn.Linear(32, 32)
        self.v = nn.Linear(32, 16, bias=False)
        self.o = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if mem is None else mem  # cross-attention reads another tensor
        q, k, v = self.q(x), self.k(kv), self.v(kv)
        a = torch.softmax(q @ k.transpose(-1, -2), -1)
        return self.o(torch.cat([a @ v, a @ v], -1))


def test_sibling_layers_share_one_gemm_exactly() -> None:
    m = _Attention().eval()
    for cfg in (
        tc.QuantConfig(mode="dynamic"),
        tc.QuantConfig(mode="dynamic", activation=tc.IntSpec(8, granularity="token")),
    ):
        q, c = _pair(m, cfg, None)
        solo = copy.deepcopy(c)  # the same integer layers, run one by one
        for layer in (solo.q, solo.k, solo.v, solo.o):
            object.__setattr__(layer, "_siblings", None)
        group = c.q.__dict__.get("_siblings")
        assert group is not None and group.members == [c.q, c.k, c.v, c.o]
        x, mem = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
        for _ in range(4):
            assert torch.equal(c(x), solo(x))
        assert group.members == [c.q, c.k, c.v]  # o reads another tensor: it runs alone now
        for ctx in (torch.no_grad(), torch.inference_mode()):
            with ctx:
                assert torch.equal(c(x), solo(x))
                assert torch.equal(c(x, mem), solo(x, mem))
                assert torch.allclose(c(x), q(x), atol=1e-2)
                # an input changed in place between two members is noticed
                x2 = x.clone()
                yq = c.q(x2)
                x2.mul_(2)
                assert torch.equal(c.k(x2), solo.k(x2))
                assert torch.equal(yq, solo.q(x))
    assert link_siblings_count(c) == 4


def link_siblings_count(model: nn.Module) -> int:
    from torchcompress.quant.siblings import link_siblings

    return link_siblings(model)
