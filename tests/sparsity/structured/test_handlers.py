"""Module handlers: the registry, unknown modules, custom handlers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    UnsupportedModuleError,
)
from torchcompress.sparsity.structured import HANDLERS, ModuleHandler, ParameterHandler

from .conftest import X, run, zero_units


class MyConv(nn.Module):
    """A convolution torchcompress does not know (its own parameters, F.conv2d)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)
        self.width = cout

    def forward(self, x):
        return F.conv2d(x, self.weight, padding=1)


class WithMyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = MyConv(8, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(h)))


def test_unknown_module_is_an_error_saying_how_to_register_or_ignore() -> None:
    m = WithMyConv().eval()
    with pytest.raises(UnsupportedModuleError) as e:
        tc.prune_channels(m, X, 0.5)
    msg = str(e.value)
    assert "'b' (MyConv)" in msg and "conv2d" in msg
    assert "HANDLERS.add" in msg and "ignore=" in msg
    assert m.a.out_channels == 8


def test_ignoring_the_unknown_module_keeps_it_whole() -> None:
    m = WithMyConv().eval()
    tc.prune_channels(m, X, 0.5, ignore=["b"])
    assert m.b.weight.shape == (8, 8, 3, 3) and m.a.out_channels == 8  # its inputs are kept
    assert m.fc1.in_features == 8 and m.fc1.out_features == 8
    assert m(X).shape == (2, 2)


def test_registering_a_handler_makes_it_prunable() -> None:
    class MyConvHandler(ModuleHandler):
        types = (MyConv,)
        attributes = ("width",)
        role = "weight"

        def propagate(self, ctx, name, module, call):
            x, y = call.args[0], call.output
            key = ctx.key(module, name, "weight")
            out = ctx.graph.produce(key, 0, module.weight.shape[0], origin=name, binder=name)
            cin = ctx.label(x, 1)
            if cin is not None:
                ctx.graph.bind(key, 1, cin, name)
            ctx.set_label(y, 1, out)

        def resize(self, module, keep, name=""):
            module.width = module.weight.shape[0]

    HANDLERS.add("test_my_conv", MyConvHandler())
    try:
        torch.manual_seed(0)
        m = WithMyConv().eval()
        zero_units(m, X)
        ref = run(m, X)
        tc.prune_channels(m, X, 0.5, criterion="l1")
        torch.testing.assert_close(run(m, X), ref, rtol=1e-4, atol=1e-5)
        assert m.b.weight.shape == (4, 4, 3, 3) and m.b.width == 4 and m.a.out_channels == 4
    finally:
        HANDLERS._entries.pop("test_my_conv")


def test_parameter_handler_for_a_position_embedding() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.pos = nn.Parameter(torch.randn(1, 5, 8))
            self.fc1 = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            h = self.proj(x) + self.pos
            return self.head(torch.relu(self.fc1(h)).mean(1))

    x = torch.randn(2, 5, 4)
    with pytest.raises(UnsupportedModuleError, match=r"'\(model\)' \(Tokens\): owns 'pos'"):
        tc.prune_channels(Tokens().eval(), x, 0.5)
    HANDLERS.add("test_tokens", ParameterHandler(Tokens))
    try:
        torch.manual_seed(0)
        m = Tokens()
        zero_units(m, x)
        ref = run(m, x)
        tc.prune_channels(m, x, 0.5, criterion="l1")
        torch.testing.assert_close(run(m, x), ref, rtol=1e-4, atol=1e-5)
        assert m.pos.shape == (1, 5, 4) and m.proj.out_features == 4
    finally:
        HANDLERS._entries.pop("test_tokens")


def test_a_linear_over_a_batch_like_dimension_carries_its_channels(seeded) -> None:
    class TokenMix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.mix = nn.Linear(5, 5)  # mixes the 5 tokens; the 6 channels are batch-like here
            self.head = nn.Linear(6, 2)

        def forward(self, x):  # (B, 5, 4)
            h = self.mix(self.a(x).transpose(1, 2))  # (B, 6, 5)
            return self.head(h.sum(-1))

    m = TokenMix().eval()
    x = torch.randn(2, 5, 4)
    zero_units(m, x)
    ref = run(m, x)
    tc.prune_channels(m, x, 0.5, criterion="l1")
    assert (m.a.out_features, m.head.in_features, m.mix.in_features) == (3, 3, 5)
    torch.testing.assert_close(run(m, x), ref, rtol=1e-4, atol=1e-5)
