"""tc.quantize: the simulation, the modes, graph planning, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    NumericalError,
    SelectionError,
    UnsupportedModuleError,
)
from torchcompress.quant import QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from torchcompress.quant import functional as QF
from torchcompress.quant.hardware import int8_saturates


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def calib(n: int = 3, shape: tuple[int, ...] = (8, 16)) -> list[torch.Tensor]:
    return [torch.randn(*shape) for _ in range(n)]


class Branchy(nn.Module):
    """One layer that the data never reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if h.sum() > 1e9:  # data-dependent control flow: no fx graph
            h = h * 2
        return self.fc2(torch.relu(h))


def test_static_linear_simulates_the_integer_arithmetic() -> None:
    m = Untraceable().eval()
    data = calib(4, (8, 8))
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(reduce_range="none"), data)
    assert isinstance(q.fc1, QuantLinear) and q.fc1.input_quant is not None
    # by hand: input range from min/max over all batches, per-channel symmetric weights
    allx = torch.cat(data)
    s_in, z_in = QF.choose_qparams(
        allx.min(), allx.max(), 0, 255, symmetric=False, include_zero=True
    )
    w = m.fc1.weight.detach()
    sw = torch.maximum(w.amax(1).clamp(min=0) / 127, (-w.amin(1)).clamp(min=0) / 128)
    wq = torch.clamp(torch.round(w / sw[:, None]), -128, 127) * sw[:, None]
    x = torch.randn(5, 8)
    xq = QF.fake_quantize(x, s_in, z_in, 0, 255)
    ref = F.linear(xq, wq, m.fc1.bias)
    assert torch.allclose(q.fc1(x), ref, atol=1e-6)
    assert float(q.fc1.input_quant.scale) == pytest.approx(float(s_in))


def test_dynamic_uses_each_inputs_range() -> None:
    m = mlp()
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(mode="dynamic"))
    x = torch.randn(4, 16) * 10
    s, z = QF.tensor_qparams(x, 0, 255, symmetric=False)
    lin = q[0]
    ref = F.linear(QF.fake_quantize(x, s, z, 0, 255), lin.quantized_weight(), lin.bias)
    assert torch.allclose(lin(x), ref, atol=1e-6)
    assert lin.input_quant.dynamic


def test_per_token_dynamic() -> None:
    m = mlp()
    cfg = tc.QuantConfig(mode="dynamic", activation=tc.IntSpec(8, granularity="token"))
    q = tc.quantize(copy.deepcopy(m), cfg)
    x = torch.randn(2, 3, 16)
    x[0, 0] *= 100  # one loud token does not change the others' scales
    s, z = QF.token_qparams(x, -128, 127, symmetric=True)
    lin = q[0]
    ref = F.linear(QF.fake_quantize(x, s, z, -128, 127), lin.quantized_weight(), lin.bias)
    assert torch.allclose(lin(x), ref, atol=1e-5)


def test_weight_only_group() -> None:
    m = mlp()
    cfg = tc.QuantConfig(
        weight=tc.IntSpec(4, symmetric=False, signed=False, granularity="group", group_size=8),
        activation=None,
    )
    q = tc.quantize(copy.deepcopy(m), cfg)
    lin = q[0]
    assert lin.input_quant is None
    assert lin.weight_quant.scale.shape == (32, 2)
    w = lin.quantized_weight()
    # at most 16 distinct values per group of 8 inputs, error at most half a step
    err = (w - m[0].weight).abs().reshape(32, 2, 8)
    assert bool((err <= lin.weight_quant.scale.unsqueeze(-1) / 2 + 1e-6).all())


def test_conv_layers_and_observers() -> None:
    m = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10, 2)
    ).eval()
    data = [torch.randn(2, 3, 10) for _ in range(2)]
    for obs in ("minmax", "moving_minmax", "percentile", "mse", "kl", "sawb"):
        q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(observer=obs), data)
        assert isinstance(q[0], QuantConv1d)
        out = q(data[0])
        assert out.shape == (2, 2) and bool(torch.isfinite(out).all())
    m2 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    q2 = tc.quantize(copy.deepcopy(m2), tc.QuantConfig(), [torch.randn(2, 3, 6, 6)])
    assert isinstance(q2[0], QuantConv2d)
    x = torch.randn(1, 3, 6, 6)
    assert torch.allclose(q2(x), m2(x), atol=0.1)


@pytest.mark.hf
def test_hf_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    m = nn.Sequential(Conv1D(12, 6)).eval()  # 6 -> 12, weight [6, 12]
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(mode="dynamic"))
    assert isinstance(q[0], QuantLinear) and q[0].source == "Conv1D"
    assert q[0].weight.shape == (12, 6)
    x = torch.randn(3, 6)
    assert torch.allclose(q(x), m(x), atol=0.05)
    c = tc.convert(q)
    assert torch.allclose(c(x), q(x), atol=1e-4)


def test_static_without_calibration_data() -> None:
    with pytest.raises(DataError, match="calib_data"):
        tc.quantize(mlp(), tc.QuantConfig())


def test_calibration_that_never_reaches_a_layer() -> None:
    m = Branchy()
    with pytest.raises(CalibrationError, match="unused"):
        tc.quantize(m, tc.QuantConfig(), [torch.randn(2, 4)])
    assert isinstance(m.unused, nn.Linear) and isinstance(m.a, nn.Linear)  # left as it was
    assert "forward" not in m.__dict__
    tc.quantize(m, tc.QuantConfig(), [torch.randn(2, 4)], exclude=["unused"])
    assert isinstance(m.a, QuantLinear) and isinstance(m.unused, nn.Linear)


def test_nan_in_weights_and_activations() -> None:
    m = mlp()
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="'2'"):
        tc.quantize(m, tc.QuantConfig(mode="dynamic"))
    m = mlp()
    bad = torch.randn(8, 16)
    bad[0, 0] = float("inf")
    with pytest.raises(NumericalError, match="0"):
        tc.quantize(m, tc.QuantConfig(), [bad])
    assert isinstance(m[0], nn.Linear)


def test_group_size_must_divide() -> None:
    cfg = tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=5), activation=None)
    with pytest.raises(ConfigError, match=r"'0'.*16 inputs"):
        tc.quantize(mlp(), cfg)


def test_selection_errors() -> None:
    with pytest.raises(SelectionError):
        tc.quantize(mlp(), tc.QuantConfig(mode="dynamic"), include=["nope"])
    with pytest.raises(SelectionError, match="no layer"):
        tc.quantize(nn.Sequential(nn.ReLU()), tc.QuantConfig(mode="dynamic"))
    m = tc.quantize(mlp(), tc.QuantConfig(mode="dynamic"), include=["2"])
    assert isinstance(m[0], nn.Linear) and isinstance(m[2], QuantLinear)
    with pytest.raises(ConfigError):
        tc.quantize(mlp(), "int8")  # type: ignore[arg-type]


def test_bad_batch_is_a_data_error() -> None:
    with pytest.raises(DataError, match="does not fit"):
        tc.quantize(mlp(), tc.QuantConfig(), [torch.randn(2, 5)])


def test_reduce_range_knob() -> None:
    for setting, expect in (("weight", (-64, 63)), ("none", (-128, 127))):
        q = tc.quantize(mlp(), tc.QuantConfig(mode="dynamic", reduce_range=setting))
        assert (q[0].weight_quant.quant_min, q[0].weight_quant.quant_max) == expect
    q = tc.quantize(mlp(), tc.QuantConfig(mode="dynamic", reduce_range="activation"))
    assert (q[0].input_quant.quant_min, q[0].input_quant.quant_max) == (0, 127)
    q = tc.quantize(mlp(), tc.QuantConfig(mode="dynamic"))
    auto = (q[0].weight_quant.quant_min, q[0].weight_quant.quant_max)
    assert auto == ((-64, 63) if int8_saturates() else (-128, 127))
    # not an 8-bit pair: nothing to reduce
    q = tc.quantize(
        mlp(),
        tc.QuantConfig(
            weight=tc.IntSpec(4, granularity="channel"), mode="dynamic", reduce_range="weight"
        ),
    )
    assert (q[0].weight_quant.quant_min, q[0].weight_quant.quant_max) == (-8, 7)


def test_calibration_restores_training_mode_and_records_history() -> None:
    m = mlp().train()
    tc.quantize(m, tc.QuantConfig(), calib(), graph="layer")
    assert m.training and m[0].training
    h = tc.io.history(m)
    assert h[-1]["step"] == "quantize" and h[-1]["config"]["mode"] == "static"


def test_untraceable_model_is_quantized_layer_by_layer() -> None:
    m = Untraceable().eval()
    q = tc.quantize(m, tc.QuantConfig(), calib(2, (4, 8)))
    assert not hasattr(q, "quant_graph")
    assert q.fc1.input_quant is not None and q.fc2.input_quant is not None


def test_float16_and_bfloat16_models() -> None:
    for dtype in (torch.bfloat16, torch.float64):
        m = mlp().to(dtype)
        q = tc.quantize(m, tc.QuantConfig(mode="dynamic"))
        y = q(torch.randn(2, 16, dtype=dtype))
        assert y.dtype == dtype
        assert q[0].weight_quant.scale.dtype == torch.float32


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block = Block(8)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(self.act(self.stem(x))))
        return self.head(torch.flatten(x, 1))


def _randomize_bn(m: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(mod.num_features, generator=g) * 0.2)


def test_one_shot_iterator_calibration() -> None:
    m = TinyResNet().eval()
    batches = (torch.randn(2, 3, 8, 8) for _ in range(2))  # a generator: iterated once
    q = tc.quantize(m, tc.QuantConfig(), batches)
    assert q.quant_graph.quantizers["input_stem"].calibrated


def test_transformer_encoder_quantizes_what_runs_and_skips_mha_out_proj() -> None:
    """nn.TransformerEncoder: out_proj (read by its MultiheadAttention) stays float; linear1/2 are
    quantized and really run under no_grad (the fused fast path is turned off)."""
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2
    ).eval()
    x = torch.randn(4, 6, 32)
    with torch.no_grad():
        ref = enc(x)
    q = tc.quantize(copy.deepcopy(enc), tc.QuantConfig(), calib_data=[x])
    assert isinstance(q.layers[0].self_attn.out_proj, nn.Linear)
    assert isinstance(q.layers[0].linear1, QuantLayer)
    with torch.no_grad():
        y_nograd = q(x)
    torch.testing.assert_close(y_nograd, q(x))  # fast path off: same as the slow path
    assert 0 < float((y_nograd - ref).norm() / ref.norm()) < 0.05
    tc.convert(q)
    with torch.no_grad():
        torch.testing.assert_close(q(x), y_nograd, atol=0.05, rtol=0.0)
    with pytest.raises(UnsupportedModuleError, match="MultiheadAttention"):
        tc.quantize(
            copy.deepcopy(enc),
            tc.QuantConfig(mode="dynamic"),
            include=["layers.0.self_attn.out_proj"],
        )
