"""fusion.analysis: pairs found through fx or a recorded forward; unsafe ones refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    ConfigError,
    ShapeError,
    UnsupportedModuleError,
)
from torchcompress.fusion import fusion_pairs

from .conftest import check_fused, hide_from_fx, n_bn, randomize_bn


def test_resnet_option_a_with_untraceable_shortcut() -> None:
    # PadShortcut has data-dependent control flow: fx treats it as opaque and traces the rest
    model = randomize_bn(tc.models.resnet20(shortcut="A"))
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises
        torch.fx.symbolic_trace(model)
    check_fused(model, torch.randn(2, 3, 32, 32))
    assert n_bn(model) == 0


class ResidualBeforeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.conv2(x))  # conv's output is used twice


def test_output_used_elsewhere_is_not_fused() -> None:
    model = randomize_bn(ResidualBeforeBN())
    x = torch.randn(2, 4, 6, 6)
    check_fused(model, x)
    assert isinstance(model.bn, nn.BatchNorm2d)  # kept
    assert isinstance(model.bn2, nn.Identity)  # the safe pair is folded
    with pytest.raises(UnsupportedModuleError, match="used 2 times"):
        tc.fuse(randomize_bn(ResidualBeforeBN()), pairs=[("conv", "bn")])
    with pytest.raises(UnsupportedModuleError, match="'conv'"):
        tc.fuse(randomize_bn(ResidualBeforeBN()), include=["conv"])


def test_output_returned_by_the_model_is_not_fused() -> None:
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y), y

    assert fusion_pairs(Both()) == []
    assert fusion_pairs(Both(), example_inputs=torch.randn(1, 3, 4, 4)) == []


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))  # conv called twice


class FunctionalStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        # a later user needs the BN's statistics
        return y + F.batch_norm(x, self.bn.running_mean, self.bn.running_var)


class SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.c1(x)) + self.bn(self.c2(x))


class AliasedModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.alias = self.conv  # the same conv under two names

    def forward(self, x):
        return self.bn(self.conv(x))


class InplaceBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        y.relu_()  # the BN does not see the conv's raw output
        return self.bn(y)


@pytest.mark.parametrize(
    "cls", [ResidualBeforeBN, SharedConv, FunctionalStats, SharedBN, AliasedModule, InplaceBetween]
)
@pytest.mark.parametrize("traced", [False, True])
def test_unsafe_patterns_are_left_alone(cls, traced, monkeypatch) -> None:
    model = randomize_bn(cls())
    x = torch.randn(2, 4 if cls is ResidualBeforeBN else 3, 5, 5)
    kw = {}
    if traced:
        hide_from_fx(monkeypatch)
        kw = {"example_inputs": x}
        with pytest.raises(ConfigError, match="example_inputs"):
            tc.fuse(randomize_bn(cls()))
    check_fused(model, x, **kw)
    expected = 1 if cls is ResidualBeforeBN else n_bn(cls())  # conv2 -> bn2 is safe there
    assert n_bn(model) == expected
    assert tc.io.history(model)[-1]["config"]["method"] == ("example_inputs" if traced else "fx")


def test_recorded_forward_fuses_the_zoo(monkeypatch) -> None:
    hide_from_fx(monkeypatch)
    model = randomize_bn(tc.models.resnet20(shortcut="B"))
    x = torch.randn(2, 3, 32, 32)
    check_fused(model, x, example_inputs=x)
    assert n_bn(model) == 0


def test_train_mode_bn_stats_are_not_touched_by_analysis() -> None:
    model = randomize_bn(ResidualBeforeBN()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fusion_pairs(model, example_inputs=torch.randn(2, 4, 6, 6))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.skip = nn.Conv2d(8, 8, 1)
        self.bn_skip = nn.BatchNorm2d(8)

    def forward(self, x):
        if x.mean() > 100:  # data-dependent control flow: fx cannot trace this forward
            y = self.bn_b(self.conv_b(x))
        else:
            y = self.bn(self.conv(x))
        z = self.skip(y)
        return self.bn_skip(z) + z


def test_untraceable_model_needs_example_inputs_or_pairs() -> None:
    model = randomize_bn(DataDependent())
    with pytest.raises(ConfigError) as info:
        tc.fuse(model)
    msg = str(info.value)
    assert "example_inputs" in msg and "pairs" in msg and "'bn'" in msg
    assert n_bn(model) == 3  # unchanged

    x = torch.randn(2, 3, 6, 6)
    check_fused(model, x, example_inputs=x)
    assert isinstance(model.bn, nn.Identity)
    assert isinstance(model.bn_b, nn.BatchNorm2d)  # not on the path this input took
    assert isinstance(model.bn_skip, nn.BatchNorm2d)  # skip's output is also used by the add
    assert tc.io.history(model)[-1]["config"]["method"] == "example_inputs"


def test_untraceable_model_with_explicit_pairs() -> None:
    model = randomize_bn(DataDependent())
    x = torch.randn(2, 3, 6, 6)
    check_fused(model, x, pairs=[("conv", "bn"), ("conv_b", "bn_b")])
    assert isinstance(model.bn, nn.Identity) and isinstance(model.bn_b, nn.Identity)
    # with example inputs, an explicit pair is still checked against the recorded forward
    with pytest.raises(UnsupportedModuleError, match="used 2 times"):
        tc.fuse(randomize_bn(DataDependent()), pairs=[("skip", "bn_skip")], example_inputs=x)


def test_bad_example_inputs_are_a_shape_error(monkeypatch) -> None:
    hide_from_fx(monkeypatch)
    model = randomize_bn(tc.models.resnet20())
    with pytest.raises(ShapeError, match="'conv1'"):
        tc.fuse(model, example_inputs=torch.randn(1, 5, 32, 32))
    assert n_bn(model) == 19 and model.training


class ConvBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class BlockThenBN(nn.Module):
    """The BatchNorm normalises the output of a conv returned through its block."""

    def __init__(self, drop: bool) -> None:
        super().__init__()
        self.block = ConvBlock()
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.1) if drop else None

    def forward(self, x):
        y = self.block(x)
        return self.bn(y if self.drop is None else self.drop(y))


@pytest.mark.parametrize("traced", [False, True])
def test_layer_returned_through_a_block_is_found(traced, monkeypatch) -> None:
    model = randomize_bn(BlockThenBN(drop=False))
    x = torch.randn(2, 3, 5, 5)
    kw = {}
    if traced:
        hide_from_fx(monkeypatch)
        kw = {"example_inputs": x}
    assert fusion_pairs(model, **kw) == [("block.conv", "bn")]
    check_fused(model, x, **kw)
    assert n_bn(model) == 0


def test_an_op_between_layer_and_bn_is_a_use_even_when_it_returns_its_input(monkeypatch) -> None:
    from torchcompress.fusion.analysis import _traced_facts

    model = randomize_bn(BlockThenBN(drop=True))
    facts = _traced_facts(model, torch.randn(2, 3, 5, 5))
    # eval-mode dropout returns the conv's output itself: the BN reads the conv's tensor ...
    assert facts.bn_input == {"bn": "block.conv"}
    # ... but the dropout used it too, so the pair is not folded (as through fx)
    assert facts.uses["block.conv"] == 2
    hide_from_fx(monkeypatch)
    assert fusion_pairs(model, example_inputs=torch.randn(2, 3, 5, 5)) == []


def test_recorded_analysis_skips_layers_inside_compressed_modules(monkeypatch) -> None:
    from torchcompress.tracing import register_leaf
    from torchcompress.tracing import tracer as tracer_module

    @register_leaf
    class Packed(nn.Module):  # stands for a family's module with a plain conv inside
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x)

    try:
        model = randomize_bn(nn.Sequential(Packed(), nn.BatchNorm2d(4)))
        x = torch.randn(1, 3, 4, 4)
        assert fusion_pairs(model) == []
        hide_from_fx(monkeypatch)
        assert fusion_pairs(model, example_inputs=x) == []
    finally:
        tracer_module._LEAF_CLASSES.remove(Packed)
