"""quant.int_graph: the integer graph's uint8 ops, residual operands, rebuilding."""

from __future__ import annotations

import copy

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
