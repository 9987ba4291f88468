"""Building single integer layers for the kernel and integer-layer tests."""

from __future__ import annotations

import torch
from torch import nn

from torchcompress.quant import IntSpec, QuantConfig
from torchcompress.quant import functional as QF
from torchcompress.quant.build import build_quant_layer, make_activation_quant
from torchcompress.quant.hardware import resolve_reduce_range
from torchcompress.quant.int_layer import IntLayer
from torchcompress.quant.modules import FakeQuantize, QuantLayer

U8 = IntSpec(8, symmetric=False, signed=False)


def calibrated(x: torch.Tensor, config: QuantConfig, name: str) -> FakeQuantize:
    """A static activation quantizer calibrated on ``x``."""
    fq = make_activation_quant(config, name, spec=U8)
    fq.observe(x)
    fq.calibrate()
    fq.observing, fq.enabled = False, True
    return fq


def quant_layer(module: nn.Module, config: QuantConfig, calib: torch.Tensor | None) -> QuantLayer:
    """The fake-quant layer of ``module`` with its input quantizer calibrated on ``calib``."""
    reduce = resolve_reduce_range(config.reduce_range, torch.device("cpu"))
    layer = build_quant_layer(module, "layer", config, reduce=reduce)
    fq = layer.input_quant
    if fq is not None and not fq.dynamic and calib is not None:
        fq.observe(calib)
        fq.calibrate()
        fq.observing, fq.enabled = False, True
    return layer.eval()


def graph_int_layer(
    module: nn.Module,
    x: torch.Tensor,
    *,
    accum: torch.Tensor | None = None,
    unary: str | None = None,
) -> tuple[IntLayer, dict[str, FakeQuantize], QuantLayer]:
    """An integer-graph layer of ``module``: uint8 input, uint8 output, an optional uint8
    residual operand added before ``unary``; quantizers calibrated on ``x`` and the float output."""
    cfg = QuantConfig()
    layer = quant_layer(module, cfg, None)
    layer.input_quant = None
    fqs = {"input": calibrated(x, cfg, "in")}
    with torch.no_grad():
        y = layer._op(fqs["input"](x), layer.quantized_weight())
    if accum is not None:
        fqs["accum"] = calibrated(accum, cfg, "acc")
        y = y + fqs["accum"](accum)
    if unary is not None:
        y = torch.relu(y) if unary == "relu" else torch.nn.functional.relu6(y)
    fqs["output"] = calibrated(y, cfg, "out")
    m = IntLayer.from_quant(
        layer,
        input_fq=fqs["input"],
        output_fq=fqs["output"],
        accum_fq=fqs.get("accum"),
        unary=unary,
        graph_mode=True,
    )
    return m, fqs, layer


def u8(x: torch.Tensor, fq: FakeQuantize) -> torch.Tensor:
    """``x`` quantized as the integer graph stores it (uint8, offset by ``-qmin``)."""
    s, z = float(fq.scale), int(fq.zero_point) - fq.quant_min
    return QF.quantize_u8(x, s, z, fq.quant_max - fq.quant_min)


def fake_quant_graph_output(
    layer: QuantLayer,
    fqs: dict[str, FakeQuantize],
    x_u8: torch.Tensor,
    acc_u8: torch.Tensor | None,
    unary: str | None,
) -> torch.Tensor:
    """The fake-quant reference of a graph layer, from uint8 inputs, as uint8."""

    def deq(u: torch.Tensor, fq: FakeQuantize) -> torch.Tensor:
        return QF.dequantize_u8(u, float(fq.scale), int(fq.zero_point) - fq.quant_min)

    y = layer._op(deq(x_u8, fqs["input"]), layer.quantized_weight())
    if acc_u8 is not None:
        y = y + deq(acc_u8, fqs["accum"])
    if unary is not None:
        y = torch.relu(y) if unary == "relu" else torch.nn.functional.relu6(y)
    return u8(y, fqs["output"])


def assert_u8_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Integer outputs equal up to rounding ties: at most one step, on a few elements."""
    assert got.dtype == want.dtype == torch.uint8
    d = (got.int() - want.int()).abs()
    assert int(d.max()) <= 1, int(d.max())
    assert float((d > 0).float().mean()) < 0.01
