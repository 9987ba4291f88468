"""quant.int_layer: integer storage, the exact dequantizing fallback, kernel selection."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CompressionStateError
from torchcompress.quant import IntSpec, QuantConfig
from torchcompress.quant.int_layer import KERNELS, DequantKernel, IntLayer, Kernel, select_kernel
from torchcompress.quant.kernels import _onednn_ok

from ._layers import fake_quant_graph_output, graph_int_layer, quant_layer, u8

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "bits,symmetric,granularity",
    list(itertools.product([2, 3, 4, 8, 16], [True, False], ["tensor", "channel", "group"])),
)
def test_stored_integers_are_the_fake_quant_weights(
    bits: int, symmetric: bool, granularity: str
) -> None:
    torch.manual_seed(0)
    spec = IntSpec(
        bits,
        symmetric=symmetric,
        granularity=granularity,
        group_size=8 if granularity == "group" else None,
    )
    layer = quant_layer(nn.Linear(16, 6).eval(), QuantConfig(weight=spec, activation=None), None)
    m = IntLayer.from_quant(layer, input_fq=None)
    assert torch.equal(m.dequantized_weight(), layer.quantized_weight().detach())
    q = m.int_weight()
    assert int(q.min()) >= m.wfmt["qmin"] and int(q.max()) <= m.wfmt["qmax"]
    per_byte = {2: 4, 3: 2, 4: 2, 8: 1}.get(bits)
    if per_byte:  # packed below 8 bits
        assert m.qweight.dtype == torch.uint8 and m.qweight.numel() == 16 * 6 // per_byte
    else:
        assert m.qweight.dtype == torch.int16


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, (2, 3), padding="same", padding_mode="reflect"),  # asymmetric 'same'
        nn.Conv2d(3, 4, 3, padding="valid", padding_mode="replicate"),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=2),
        nn.Conv1d(3, 4, 4, padding="same", padding_mode="reflect", dilation=2),
    ],
    ids=["same-reflect", "valid-replicate", "circular-grouped", "conv1d-same"],
)
def test_dequant_fallback_matches_fake_quant_for_every_padding(conv: nn.Module) -> None:
    """Layers no integer kernel runs (here: non-zero padding modes) simulate exactly."""
    torch.manual_seed(1)
    conv = conv.eval()
    x = torch.randn(2, conv.in_channels, *([8] * (conv.weight.dim() - 2)))
    layer = quant_layer(conv, QuantConfig(), x)
    m = IntLayer.from_quant(layer, input_fq=layer.input_quant)
    assert isinstance(m.kernel, DequantKernel)
    if _onednn_ok():
        assert f"padding_mode={conv.padding_mode!r}" in m.kernel_note()
    with torch.no_grad():
        assert torch.allclose(m(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("unary", [None, "relu", "relu6"])
def test_dequant_fallback_integer_graph_layer(unary: str | None) -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, padding=1).eval()
    x = torch.randn(4, 4, 6, 6)
    with torch.no_grad():
        acc = torch.randn_like(conv(x))
    m, fqs, layer = graph_int_layer(conv, x, accum=acc, unary=unary)
    xu, au = u8(x, fqs["input"]), u8(acc, fqs["accum"])
    with torch.no_grad():
        got = DequantKernel(m)(m, xu, au)
        assert torch.equal(got, fake_quant_graph_output(layer, fqs, xu, au, unary))


def test_kernel_selection_reasons_and_a_registered_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = quant_layer(
        nn.Linear(8, 4).eval(),
        QuantConfig(weight=IntSpec(4, granularity="group", group_size=4), mode="dynamic"),
        None,
    )
    m = IntLayer.from_quant(layer, input_fq=layer.input_quant)
    k, reasons = select_kernel(m, CPU)
    assert isinstance(k, DequantKernel)
    assert any("group-wise" in r for r in reasons)
    assert "group-wise weight scales have no int8 kernel" in m.kernel_note()

    class Exact(Kernel):
        """A test kernel: the fallback's arithmetic, registered first."""

        name = "exact"
        note = "test kernel"

        @classmethod
        def supports(cls, m: IntLayer, device: torch.device) -> str | None:
            return cls.kind_reason(m)

        def __call__(
            self, m: IntLayer, x: torch.Tensor, accum: torch.Tensor | None
        ) -> torch.Tensor:
            return DequantKernel(m)(m, x, accum)

    entries = {"exact": Exact, **KERNELS._entries}
    monkeypatch.setattr(KERNELS, "_entries", entries)
    fresh = IntLayer.from_quant(layer, input_fq=layer.input_quant)
    assert isinstance(fresh.kernel, Exact) and fresh.kernel_note() == "test kernel"
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(fresh(x), layer(x), atol=1e-6)


def test_uncalibrated_quantizer_is_an_error() -> None:
    layer = quant_layer(nn.Linear(8, 4).eval(), QuantConfig(), None)  # input never observed
    with pytest.raises(CompressionStateError, match="calibrated"):
        IntLayer.from_quant(layer, input_fq=layer.input_quant)


def test_repr_moves_and_copies() -> None:
    m = tc.convert(
        tc.quantize(nn.Sequential(nn.Conv2d(3, 8, 3, groups=1)), QuantConfig(activation=None))
    )[0]
    r = repr(m)
    assert "3, 8, kernel_size=(3, 3)" in r and "float activations" in r and "weight-only" in r
    assert m.geometry.padding == (0, 0)
    _ = m.kernel
    m.to("cpu", torch.float64)  # a move re-packs on next use; scales stay float32
    assert m._kernel is None and m.weight_scale.dtype == torch.float32
    d = copy.deepcopy(m)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert torch.equal(d(x), m(x))
