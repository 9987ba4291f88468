"""quant.build: the layers and quantizers the verbs share."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress import layers
from torchcompress.errors import ConfigError, NumericalError
from torchcompress.quant import IntSpec, QuantConfig, QuantConv1d, QuantConv2d, QuantLinear
from torchcompress.quant.build import (
    build_quant_layer,
    finalize_for_convert,
    integer_ranges,
    make_activation_quant,
    select_quant_targets,
)


@pytest.mark.parametrize(
    "module,cls",
    [
        (nn.Linear(6, 4), QuantLinear),
        (nn.Conv1d(3, 4, 3, padding="same", padding_mode="circular"), QuantConv1d),
        (nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False), QuantConv2d),
    ],
)
def test_build_takes_over_the_parameters(module: nn.Module, cls: type) -> None:
    layer = build_quant_layer(module, "m", QuantConfig(mode="dynamic"))
    assert type(layer) is cls and layer.weight is module.weight and layer.bias is module.bias
    assert layer.source == type(module).__name__
    assert layer.weight_quant.calibrated and layer.input_quant.dynamic
    x = torch.randn(
        2, *([6] if cls is QuantLinear else [module.in_channels, *[7] * (module.weight.dim() - 2)])
    )
    with torch.no_grad():
        assert torch.allclose(layer(x), module(x), atol=0.1)


def test_build_errors_name_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'act': cannot quantize a ReLU"):
        build_quant_layer(nn.ReLU(), "act", QuantConfig())
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(NumericalError, match=r"'fc' \(Linear 6->4\)"):
        build_quant_layer(lin, "fc", QuantConfig())
    cfg = QuantConfig(weight=IntSpec(4, granularity="group", group_size=4), activation=None)
    with pytest.raises(ConfigError, match=r"'fc' \(Linear 6->4: 6 inputs"):
        build_quant_layer(nn.Linear(6, 4), "fc", cfg)


def test_integer_ranges_and_activation_quantizers(caplog: pytest.LogCaptureFixture) -> None:
    cfg = QuantConfig()
    assert integer_ranges(cfg, "none") == ((-128, 127), (0, 255))
    assert integer_ranges(cfg, "weight") == ((-64, 63), (0, 255))
    assert integer_ranges(cfg, "activation") == ((-128, 127), (0, 127))
    w4 = QuantConfig(weight=IntSpec(4))
    assert integer_ranges(w4, "weight") == ((-8, 7), (0, 255))  # only 8-bit pairs saturate
    token = QuantConfig(mode="dynamic", activation=IntSpec(8, granularity="token"))
    with caplog.at_level("WARNING"):
        fq = make_activation_quant(token, "conv", geometry=layers.geometry(nn.Conv2d(4, 4, 3)))
    assert fq.granularity == "tensor" and "per-token" in caplog.text
    assert make_activation_quant(token, "fc").granularity == "token"


def test_targets_skip_quantized_layers_and_finalize() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    tc.quantize(m, QuantConfig(mode="dynamic"), include=["0"])
    names = [n for n, _ in select_quant_targets(m, None, None, "quantization")]
    assert names == ["1"]  # the quantized layer is left alone
    qat = tc.prepare_qat(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
        QuantConfig(activation=None),
        graph="layer",
    )
    before = copy.deepcopy(qat).eval()
    finalize_for_convert(qat)
    assert type(qat[0]) is QuantConv2d  # the folded conv+BN became a plain fake-quant conv
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        assert torch.allclose(qat.eval()(x), before(x), atol=1e-5)
