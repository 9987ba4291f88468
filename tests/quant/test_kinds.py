"""quant.kinds: one place for layer kinds — the functional forward equals each module's own."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from torchcompress.errors import UnsupportedModuleError
from torchcompress.quant import kinds

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
    k = kinds.kind_of(conv)
    assert k is not None and k.runs_as == f"conv{nd}d"
    y = kinds.forward(k.runs_as, x, conv.weight, conv.bias, kinds.geometry(conv))
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
        assert kinds.reversed_padding(padding, kernel, dilation) == want, padding


def test_conv_padding_resolves_strings() -> None:
    assert kinds.conv_padding("same", (3, 3), (1, 1)) == (1, 1)
    assert kinds.conv_padding("same", (3, 3), (2, 1)) == (2, 1)
    assert kinds.conv_padding("same", (2, 3), (1, 1)) is None  # asymmetric
    assert kinds.conv_padding("valid", (3,), (1,)) == (0,)
    assert kinds.conv_padding((2, 0), (3, 3), (1, 1)) == (2, 0)


def test_linear_and_description() -> None:
    lin = nn.Linear(5, 3)
    k = kinds.kind_of(lin)
    assert k is not None and k.name == "linear" and k.token_inputs and not k.channels_first
    assert kinds.geometry(lin) == {"in_features": 5, "out_features": 3}
    assert kinds.describe(lin) == "Linear 5->3"
    assert kinds.describe(nn.Conv1d(2, 7, 3)) == "Conv1d 2->7"
    assert kinds.describe(nn.ReLU()) == "ReLU"
    assert kinds.kind_of(nn.ReLU()) is None
    x = torch.randn(4, 5)
    assert torch.equal(kinds.forward("linear", x, lin.weight, lin.bias, {}), lin(x))
    assert kinds.runs_as("conv2d").fuses_residual and not kinds.runs_as("conv1d").fuses_residual


@pytest.mark.hf
def test_hf_conv1d_is_a_transposed_linear() -> None:
    from transformers.pytorch_utils import Conv1D

    m = Conv1D(12, 6)  # 6 -> 12, weight stored [6, 12]
    k = kinds.kind_of(m)
    assert k is not None and k.name == "hf_conv1d" and k.runs_as == "linear"
    assert k.source == "Conv1D" and kinds.geometry(m) == {"in_features": 6, "out_features": 12}
    w = k.canonical_weight(m)
    assert w.shape == (12, 6) and torch.equal(w, m.weight.t())
    x = torch.randn(3, 6)
    assert torch.allclose(kinds.forward("linear", x, w, m.bias, {}), m(x), atol=1e-6)
    assert Conv1D in kinds.quantizable_types()


def test_quantized_layers_report_their_geometry() -> None:
    import torchcompress as tc

    m = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding="valid", padding_mode="reflect"))
    q = tc.quantize(m, tc.QuantConfig(activation=None))
    g = kinds.geometry(q[0])
    assert g == {
        "stride": (2, 2),
        "padding": "valid",
        "dilation": (1, 1),
        "groups": 1,
        "padding_mode": "reflect",
    }
    assert q[0].layer_args()["kernel_size"] == (3, 3)
    with pytest.raises(UnsupportedModuleError, match="ReLU is not a layer"):
        kinds.geometry(nn.ReLU())
