"""quant.geometry: quantization on the shared layer model — the functional forward equals each
module's own, padding as kernels take it, descriptions, quantized layers' geometry."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from torchcompress import layers
from torchcompress.errors import UnsupportedModuleError
from torchcompress.quant import geometry as QG
from torchcompress.quant.build import quantizable_types, token_inputs
from torchcompress.quant.graph import fuses_residual

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "nd,padding,mode,groups,dilation",
    [
        (nd, padding, mode, groups, dilation)
        for nd, padding, mode, (groups, dilation) in itertools.product(
            (1, 2), (0, 1, "same", "valid"), PADDING_MODES, ((1, 1), (2, 2))
        )
    ],
)
def test_forward_equals_the_module(
    nd: int, padding: int | str, mode: str, groups: int, dilation: int
) -> None:
    cls = nn.Conv1d if nd == 1 else nn.Conv2d
    kernel = 4 if nd == 1 else (2, 3)  # even sizes: asymmetric 'same' padding
    conv = cls(4, 6, kernel, padding=padding, padding_mode=mode, groups=groups, dilation=dilation)
    x = torch.randn(2, 4, *([9] * nd))
    k = layers.layer_kind(conv)
    geo = QG.geometry_of(conv)
    assert k is not None and k.name == "conv" and geo.spatial_dims == nd
    y = layers.forward(geo, x, conv.weight, conv.bias)
    assert torch.allclose(y, conv(x), atol=1e-6)


def test_reversed_padding_is_torchs() -> None:
    for padding, kernel, dilation in (
        ("same", (2, 3), (1, 1)),
        ("same", (4,), (3,)),
        ("valid", (3, 3), (1, 1)),
        ((1, 2), (3, 5), (1, 1)),
    ):
        conv = (
            nn.Conv2d(1, 1, kernel, padding=padding, dilation=dilation)
            if len(kernel) == 2
            else (nn.Conv1d(1, 1, kernel, padding=padding, dilation=dilation))
        )
        want = list(conv._reversed_padding_repeated_twice)
        pads = layers.geometry(conv).pads  # what the functional forward pads with
        assert [p for lo_hi in reversed(pads) for p in lo_hi] == want, padding


def _conv(padding: object, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> layers.Geometry:
    return layers.Geometry("conv", 1, 1, kernel, padding=padding, dilation=dilation)


def test_conv_padding_resolves_strings() -> None:
    assert QG.symmetric_padding(_conv("same", (3, 3), (1, 1))) == (1, 1)
    assert QG.symmetric_padding(_conv("same", (3, 3), (2, 1))) == (2, 1)
    assert QG.symmetric_padding(_conv("same", (2, 3), (1, 1))) is None  # asymmetric
    assert QG.symmetric_padding(_conv("valid", (3,), (1,))) == (0,)
    assert QG.symmetric_padding(_conv((2, 0), (3, 3), (1, 1))) == (2, 0)


def test_linear_and_description() -> None:
    lin = nn.Linear(5, 3)
    k = layers.layer_kind(lin)
    geo = QG.geometry_of(lin)
    assert k is not None and k.name == "linear" and token_inputs(geo)
    assert not token_inputs(QG.geometry_of(nn.Conv1d(2, 7, 3)))  # channels first
    assert (geo.in_features, geo.out_features, geo.kernel_size) == (5, 3, ())
    assert QG.describe(lin) == "Linear 5->3"
    assert QG.describe(nn.Conv1d(2, 7, 3)) == "Conv1d 2->7"
    assert QG.describe(nn.ReLU()) == "ReLU"
    assert layers.layer_kind(nn.ReLU()) is None
    x = torch.randn(4, 5)
    assert torch.equal(layers.forward(geo, x, lin.weight, lin.bias), lin(x))
    conv1, conv2 = (QG.geometry_of(c) for c in (nn.Conv1d(2, 2, 3), nn.Conv2d(2, 2, 3)))
    assert fuses_residual(conv2) and not fuses_residual(conv1)


@pytest.mark.hf
def test_hf_conv1d_is_a_transposed_linear() -> None:
    from transformers.pytorch_utils import Conv1D

    m = Conv1D(12, 6)  # 6 -> 12, weight stored [6, 12]
    k = layers.layer_kind(m)
    geo = QG.geometry_of(m)
    assert k is not None and k.name == "hf_conv1d" and token_inputs(geo)
    assert QG.describe(m) == "Conv1D 6->12" and (geo.in_features, geo.out_features) == (6, 12)
    w = layers.canonical_weight(m)
    assert w.shape == (12, 6) and torch.equal(w, m.weight.t())
    x = torch.randn(3, 6)
    assert torch.allclose(layers.forward(geo, x, w, m.bias), m(x), atol=1e-6)
    assert Conv1D in quantizable_types(nn.Sequential(m))  # recognised by its class hierarchy


def test_quantized_layers_report_their_geometry() -> None:
    import torchcompress as tc

    m = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding="valid", padding_mode="reflect"))
    q = tc.quantize(m, tc.QuantConfig(activation=None))
    g = QG.geometry_of(q[0])
    assert g is q[0].geometry
    assert (g.stride, g.padding, g.dilation, g.groups, g.padding_mode) == (
        (2, 2),
        "valid",
        (1, 1),
        1,
        "reflect",
    )
    assert g.kernel_size == (3, 3)
    with pytest.raises(UnsupportedModuleError, match="ReLU is not a layer"):
        QG.geometry_of(nn.ReLU())


def test_legacy_geometry() -> None:
    """Files written before quantized layers carried a geometry: kind and convolution arguments."""
    assert QG.legacy_geometry((3, 5), bias=True) == layers.Geometry("linear", 5, 3, bias=True)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False, padding_mode="circular")
    old = QG.legacy_geometry(
        (6, 2, 3, 3),
        bias=False,
        stride=(2, 2),
        padding=(1, 1),
        dilation=(1, 1),
        groups=2,
        padding_mode="circular",
    )
    assert old == layers.geometry(conv)
