"""tc.models: documented parameter counts, output shapes, options and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.models import BasicBlock, CifarResNet, PadShortcut


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on a shared, loaded machine more threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _documented_counts() -> dict[tuple[str, str], int]:
    """The parameter table in the models package docstring: (name, shortcut) -> count."""
    out = {}
    for name, option, count in re.findall(
        r"``(\w+)``(?: \((A|B)\))?\s+([\d,]+)", tc.models.__doc__ or ""
    ):
        out[(name, option)] = int(count.replace(",", ""))
    return out


DOCUMENTED = _documented_counts()


def test_docstring_table_covers_every_model():
    assert len(DOCUMENTED) == 11
    assert {name for name, _ in DOCUMENTED} | {"vgg16"} == set(tc.models.names())


@pytest.mark.parametrize("key", sorted(DOCUMENTED), ids=lambda k: f"{k[0]}{k[1]}")
def test_documented_parameter_count(key):
    name, option = key
    kwargs = {"shortcut": option} if option else {}
    assert n_params(tc.models.create(name, **kwargs)) == DOCUMENTED[key]


def test_vgg16_count_from_its_docstring():
    m = tc.models.vgg16()
    assert n_params(m) == 14_724_042
    assert "14,724,042" in (tc.models.vgg16.__doc__ or "")


def test_resnet20_count_by_hand():
    # stem 3*16*9 + BN 32; stage widths w: each block has 2 convs (c_in*w*9, w*w*9) and 2 BNs (4w)
    def stage(cin, w, n):
        return cin * w * 9 + w * w * 9 + 4 * w + (n - 1) * (2 * w * w * 9 + 4 * w)

    expected = (
        3 * 16 * 9 + 32 + stage(16, 16, 3) + stage(16, 32, 3) + stage(32, 64, 3) + 64 * 10 + 10
    )
    assert n_params(tc.models.resnet20()) == expected == 269_722
    # option B adds a 1x1 conv + BN at the two stage transitions
    assert n_params(tc.models.resnet20(shortcut="B")) - expected == (16 * 32 + 64) + (32 * 64 + 128)


@pytest.mark.parametrize("name", tc.models.names())
def test_output_shapes(name):
    torch.manual_seed(0)
    m = tc.models.create(name, in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        y = m(torch.randn(1, 1, 32, 32))
    assert tuple(y.shape) == (1, 7) and torch.isfinite(y).all()


def test_default_output_shape():
    with torch.no_grad():
        assert tc.models.resnet20().eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_in_channels_and_num_classes_change_the_right_layers():
    m = tc.models.resnet20(in_channels=1, num_classes=5)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 5
    assert n_params(tc.models.resnet20()) - n_params(m) == 2 * 16 * 9 + 5 * 64 + 5


def test_option_a_vs_b_shortcuts():
    a, b = tc.models.resnet20(shortcut="A"), tc.models.resnet20(shortcut="B")
    assert isinstance(a.layer2[0].shortcut, PadShortcut)
    assert isinstance(b.layer2[0].shortcut, nn.Sequential)
    assert isinstance(a.layer1[0].shortcut, nn.Identity) and isinstance(
        b.layer1[0].shortcut, nn.Identity
    )
    # option A: subsample and zero-pad the channels, no parameters
    s = PadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = s(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0
    # the models use activation modules, not functional calls
    assert sum(isinstance(mod, nn.ReLU) for mod in a.modules()) == 1 + 2 * 9


def test_depths():
    for depth, blocks in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18)):
        m = tc.models.cifar_resnet(depth)
        assert len(m.layer1) == blocks and m.depth == depth
        convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
        assert len(convs) + 1 == depth  # the stem, 2 per block, and the fc make 6n + 2


@pytest.mark.parametrize("depth", [7, 10, 2, 21])
def test_bad_depth(depth):
    with pytest.raises(ConfigError, match="6n \\+ 2"):
        CifarResNet(depth)


def test_bad_options():
    with pytest.raises(ConfigError, match="shortcut"):
        tc.models.resnet20(shortcut="C")
    with pytest.raises(ConfigError, match="shortcut"):
        BasicBlock(16, 32, 2, shortcut="C")
    with pytest.raises(ConfigError, match=r"Did you mean .*'resnet20'"):
        tc.models.create("resnet2O")
    with pytest.raises(ConfigError):
        tc.models.vgg("vgg19")
    with pytest.raises(ConfigError):
        tc.models.mobilenet_v2(width_mult=0)
    with pytest.raises(ConfigError):
        PadShortcut(32, 16, 1)
