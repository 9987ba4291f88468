"""quant.int_graph: the integer graph's uint8 ops, residual operands, rebuilding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.quant import functional as QF
from torchcompress.quant.int_graph import pad_u8, relu_u8, requantize_u8


def test_uint8_ops_are_exact() -> None:
    u = torch.tensor([0, 3, 7, 200], dtype=torch.uint8)
    assert relu_u8(u, 7).tolist() == [7, 7, 7, 200]  # values below the zero point are negative
    assert relu_u8(u, 0) is u
    v = u.clone()
    assert relu_u8(v, 7, inplace=True) is v
    assert pad_u8(u.reshape(1, 4), (1, 1), 9).tolist() == [[9, 0, 3, 7, 200, 9]]
    s_in, z_in, s_out, z_out = 0.1, 5, 0.25, 2
    want = QF.quantize_u8(QF.dequantize_u8(u, s_in, z_in), s_out, z_out, 255)
    assert torch.equal(requantize_u8(u, s_in, z_in, s_out, z_out, 255), want)


class ResidualFromInput(nn.Module):
    """A residual add whose operand is the (float) model input: the graph quantizes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x) + x))


def test_residual_operand_quantized_from_float_runs_exactly() -> None:
    """oneDNN sums into a channels-last operand: one quantized from a float tensor is converted."""
    torch.manual_seed(0)
    m = ResidualFromInput().eval()
    data = [torch.randn(2, 4, 6, 6) for _ in range(2)]
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), data)
    assert {"accum_conv", "input_conv", "output_conv"} <= set(q.quant_graph.quantizers)
    c = tc.convert(copy.deepcopy(q))
    assert c.conv.has_accum and c.conv.unary == "relu"
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        y = c(x)
        assert torch.allclose(y, q(x), atol=1e-4)
        assert torch.equal(c(x), y)  # the operand (the input) was not overwritten


class Pooled1d(nn.Module):
    """Max pooling without a uint8 kernel (1-D, adaptive) between quantized layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 6, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(6, 6, 3, padding=1)
        self.apool = nn.AdaptiveMaxPool1d(4)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        h = torch.nn.functional.max_pool1d(h, 1)
        return self.fc(self.apool(h).flatten(1))


def test_max_pools_without_a_uint8_kernel_run_in_float() -> None:
    """torch has no uint8 max_pool1d / adaptive max pooling ("not implemented for 'Byte'"): the
    integer graph dequantizes before them and the next layer quantizes its input again."""
    torch.manual_seed(0)
    m = Pooled1d().eval()
    calib = [torch.randn(8, 3, 16) for _ in range(3)]
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), calib)
    assert sorted(q.quant_graph.quantizers) == ["input_conv1", "input_conv2", "input_fc"]
    c = tc.convert(copy.deepcopy(q))
    x = torch.randn(4, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(c(x), q(x), atol=1e-4, rtol=1e-4)
    assert c.conv1.out is None and c.conv2.out is None  # float outputs: no uint8 reaches a pool


class Clipped(nn.Module):
    """Hardtanh(0, c): a fused ReLU6 only for c = 6; another clip runs in float."""

    def __init__(self, clip: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.Hardtanh(0.0, clip)
        self.fc2 = nn.Linear(16, 4)
        self.out = nn.Hardtanh(0.0, clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(self.act(self.fc1(x))))


def test_hardtanh_fuses_as_relu6_only_when_it_clips_at_six() -> None:
    torch.manual_seed(0)
    calib = [torch.randn(16, 8) * 4 for _ in range(3)]
    x = torch.randn(32, 8) * 4
    for clip, fused in ((6.0, "relu6"), (0.5, None)):
        m = Clipped(clip).eval()
        with torch.no_grad():
            m.fc2.bias.fill_(clip)  # outputs above the clip reach the final Hardtanh
        q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), calib)
        c = tc.convert(copy.deepcopy(q))
        assert c.fc1.unary == c.fc2.unary == fused, clip
        with torch.no_grad():
            y = c(x)
            torch.testing.assert_close(y, q(x), atol=1e-4, rtol=1e-4)
            assert float(y.max()) == clip  # clipped where the model clips


# --- activations wider than the uint8 storage (issue 11, item 1) ------------------------------


class _ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv(h) + h)
        return self.head(torch.flatten(h, 1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _assert_converts_to_fake_quant(m: nn.Module, make_x, bits: int, graph: str) -> nn.Module:
    cfg = tc.QuantConfig(activation=tc.IntSpec(bits))
    q = tc.quantize(m, cfg, [make_x() for _ in range(3)], graph=graph)
    x = make_x()
    with torch.no_grad():
        y_fq = q(x)
        c = tc.convert(copy.deepcopy(q))
        y_int = c(x)
    step = float(y_fq.abs().max()) / 2 ** (bits - 1)
    tol = 1e-5 if bits > 8 else 1e-4 + 1.01 * step
    assert (y_int - y_fq).abs().max().item() <= tol * max(1.0, float(y_fq.abs().max()))
    return c


@pytest.mark.parametrize("bits", [4, 6, 8, 16])
@pytest.mark.parametrize("graph", ["auto", "layer"])
def test_wide_activations_convert_to_the_fake_quant_model(bits: int, graph: str) -> None:
    """16-bit activations used to pass through a uint8 store between layers (relative error 1-4)."""
    torch.manual_seed(0)
    _assert_converts_to_fake_quant(_mlp(), lambda: torch.randn(8, 16), bits, graph)


@pytest.mark.parametrize("bits", [8, 16])
def test_wide_activations_around_a_fused_residual_add(bits: int) -> None:
    torch.manual_seed(0)
    c = _assert_converts_to_fake_quant(
        _ResidualCNN().eval(), lambda: torch.randn(2, 3, 6, 6), bits, "auto"
    )
    assert c.conv.has_accum == (bits <= 8)  # a float operand: the add runs after the layer


def test_residual_operand_that_is_also_the_input_is_not_overwritten() -> None:
    """``relu(conv(h) + h)``: the kernel must not sum into its own input (it read a half-written
    tensor: 6% off the fake-quant model)."""
    torch.manual_seed(0)
    c = _assert_converts_to_fake_quant(
        _ResidualCNN().eval(), lambda: torch.randn(2, 3, 6, 6), 8, "auto"
    )
    assert c.conv.has_accum and not c.conv.accum_inplace_ok


def test_wide_activations_after_qat() -> None:
    torch.manual_seed(0)
    m = _mlp().train()
    data = [torch.randn(8, 16) for _ in range(3)]
    tc.prepare_qat(m, tc.QuantConfig(activation=tc.IntSpec(16)), method="ste", calib_data=data)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for x in data:
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    m.eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        y_fq = m(x)
        y_int = tc.convert(m)(x)
    assert torch.allclose(y_int, y_fq, atol=1e-5)


def test_quantize_u8_refuses_formats_wider_than_its_storage() -> None:
    with pytest.raises(ValueError, match="uint8"):
        QF.quantize_u8(torch.zeros(3), 0.1, 0, 65535)


# --- a layer called several times (issue 11, item 6) ------------------------------------------


class _Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.s = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s(torch.relu(self.s(torch.relu(self.a(x)))))


@pytest.mark.parametrize("qat", [False, True])
def test_a_layer_called_twice_converts_with_the_ranges_of_each_call(qat: bool, tmp_path) -> None:
    torch.manual_seed(0)
    m = _Shared()
    data = [torch.randn(4, 8) for _ in range(3)]
    if qat:
        tc.prepare_qat(m, tc.QuantConfig(), method="ste", calib_data=data)
    else:
        tc.quantize(m.eval(), tc.QuantConfig(), data)
    assert {"input_a", "output_a", "output_s"} <= set(m.quant_graph.quantizers)
    m.eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        y_fq = m(x)
        tc.convert(m)
        y_int = m(x)
    assert torch.allclose(y_int, y_fq, atol=1e-5)
    site = m.quant_graph.sites.s_1
    assert site.qweight is m.s.qweight and site.weights_of == "s"
    report = tc.profile(m, x[:1])
    assert report.total_params == 2 * (8 * 8 + 8)  # the shared weights count once
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    loaded = tc.load(path, _Shared().eval())
    assert loaded.quant_graph.sites.s_1.qweight is loaded.s.qweight
    with torch.no_grad():
        assert torch.equal(loaded(x), y_int)
