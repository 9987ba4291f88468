"""quant.kernels: every integer kernel against the fake-quant reference on small layers.

Kernels this machine or torch build lacks are skipped; the dequantizing fallback is checked on
every machine (tests/quant/test_int_layer.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.quant import IntSpec, QuantConfig
from torchcompress.quant.int_layer import IntLayer
from torchcompress.quant.kernels import (
    KERNELS,
    CudaIntMMKernel,
    DequantKernel,
    FbgemmDynamicKernel,
    OnednnKernel,
    TokenKernel,
    _fbgemm_engine,
    _onednn_ok,
    select_kernel,
)

from ._layers import assert_u8_close, fake_quant_graph_output, graph_int_layer, quant_layer, u8
from .test_convert import _pair

needs_onednn = pytest.mark.skipif(not _onednn_ok(), reason="no oneDNN int8 kernels in this build")
needs_fbgemm = pytest.mark.skipif(_fbgemm_engine() is None, reason="no fbgemm/x86 engine")
CPU = torch.device("cpu")


def _layers() -> dict[str, nn.Module]:
    return {
        "linear": nn.Linear(24, 16),
        "conv1d": nn.Conv1d(6, 8, 3, padding=1, stride=2),
        "conv2d": nn.Conv2d(6, 8, 3, padding="same"),
        "grouped": nn.Conv2d(6, 8, 3, padding=1, groups=2, bias=False),
        "depthwise": nn.Conv2d(6, 6, 3, dilation=2),
    }


def _input(name: str, n: int = 5) -> torch.Tensor:
    shape = {"linear": (n, 3, 24), "conv1d": (n, 6, 11)}.get(name, (n, 6, 9, 9))
    return torch.randn(*shape) * 2


def test_registry_order() -> None:
    assert KERNELS.names() == ["onednn", "fbgemm_dynamic", "token", "cuda_int_mm"]
    assert [KERNELS.get(n) for n in KERNELS] == [
        OnednnKernel,
        FbgemmDynamicKernel,
        TokenKernel,
        CudaIntMMKernel,
    ]


@needs_onednn
@pytest.mark.parametrize("name", list(_layers()))
def test_onednn_static_matches_fake_quant(name: str) -> None:
    torch.manual_seed(0)
    layer = quant_layer(_layers()[name].eval(), QuantConfig(), _input(name, 16))
    m = IntLayer.from_quant(layer, input_fq=layer.input_quant, output_fq=None)
    k, reasons = select_kernel(m, CPU)
    assert isinstance(k, OnednnKernel), reasons
    x = _input(name)
    with torch.no_grad():
        assert torch.allclose(k(m, x, None), layer(x), atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("unary", [None, "relu", "relu6"])
@pytest.mark.parametrize("name", ["linear", "conv1d", "conv2d", "grouped"])
def test_onednn_integer_output_matches_fake_quant(name: str, unary: str | None) -> None:
    torch.manual_seed(1)
    x = _input(name, 16)
    m, fqs, layer = graph_int_layer(_layers()[name].eval(), x, unary=unary)
    k = OnednnKernel(m)
    xu = u8(x, fqs["input"])
    with torch.no_grad():
        assert_u8_close(k(m, xu, None), fake_quant_graph_output(layer, fqs, xu, None, unary))


@needs_onednn
@pytest.mark.parametrize("unary", [None, "relu"])
@pytest.mark.parametrize("name", ["conv1d", "conv2d"])
def test_onednn_fused_residual_matches_fake_quant(name: str, unary: str | None) -> None:
    """The residual operand is added inside the kernel (integer output) or after it (float)."""
    torch.manual_seed(2)
    conv = _layers()[name].eval()
    x = _input(name, 8)
    with torch.no_grad():
        acc = torch.randn_like(conv(x))
    m, fqs, layer = graph_int_layer(conv, x, accum=acc, unary=unary)
    k = OnednnKernel(m)
    xu, au = u8(x, fqs["input"]), u8(acc, fqs["accum"])
    with torch.no_grad():
        want = fake_quant_graph_output(layer, fqs, xu, au, unary)
        assert_u8_close(k(m, xu, au.clone()), want)
        # the float-output path adds the dequantized operand in float
        f = copy.deepcopy(m)
        f.out = None
        got = OnednnKernel(f)(f, xu, au)
        assert torch.allclose(got, DequantKernel(f)(f, xu, au), atol=1e-4)


@needs_fbgemm
@pytest.mark.parametrize("act_bits", [8, 7])
def test_fbgemm_dynamic_matches_fake_quant(act_bits: int) -> None:
    torch.manual_seed(3)
    cfg = QuantConfig(mode="dynamic", activation=IntSpec(act_bits, symmetric=False, signed=False))
    layer = quant_layer(nn.Linear(24, 16).eval(), cfg, None)
    m = IntLayer.from_quant(layer, input_fq=layer.input_quant)
    k, reasons = select_kernel(m, CPU)
    assert isinstance(k, FbgemmDynamicKernel), reasons
    x = _input("linear") * 3
    with torch.no_grad():
        assert torch.allclose(k(m, x, None), layer(x), atol=1e-4)


@pytest.mark.skipif(
    _fbgemm_engine() is None and not _onednn_ok(), reason="no int8 CPU kernels in this build"
)
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", [8, 7])  # 8: fbgemm's GEMM; 7: the oneDNN path
def test_token_kernel_matches_fake_quant(bits: int, sym: bool) -> None:
    torch.manual_seed(4)
    spec = IntSpec(bits, symmetric=sym, signed=sym, granularity="token")
    layer = quant_layer(
        nn.Linear(24, 16).eval(), QuantConfig(mode="dynamic", activation=spec), None
    )
    m = IntLayer.from_quant(layer, input_fq=layer.input_quant)
    why = TokenKernel.supports(m, CPU)
    if why is not None:
        pytest.skip(why)
    k = TokenKernel(m)
    if k.fbgemm != (bits == 8 and _fbgemm_engine() is not None):
        pytest.skip("this build runs the other path")
    x = _input("linear")
    x[:, 0] *= 30  # loud tokens keep their own scales
    with torch.no_grad():
        assert torch.allclose(k(m, x, None), layer(x), atol=1e-4)


def test_int_mm_kernel_arithmetic_on_cpu() -> None:
    """The CUDA path's arithmetic (zero-point correction, row padding), checked with CPU _int_mm."""
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    for cfg, data in (
        (tc.QuantConfig(mode="dynamic"), None),
        (tc.QuantConfig(mode="dynamic", activation=tc.IntSpec(8, granularity="token")), None),
        (tc.QuantConfig(), [torch.randn(16, 64)]),
    ):
        q, c = _pair(m, cfg, data, graph="layer")
        assert CudaIntMMKernel.supports(c[0], CPU) == "n/a: torch._int_mm is fast on CUDA only"
        k = CudaIntMMKernel(c[0])
        for rows in (8, 40):
            x = torch.randn(rows, 64)
            assert torch.allclose(k(c[0], x, None), q[0](x), atol=1e-5)


def test_kernels_say_what_they_do_not_run() -> None:
    m = tc.convert(tc.quantize(nn.Sequential(nn.Conv1d(4, 4, 3)), QuantConfig(mode="dynamic")))[0]
    assert FbgemmDynamicKernel.supports(m, CPU) in (
        "dynamic int8 kernels exist for Linear only",
        "n/a: fbgemm runs on CPU",
    )
    assert CudaIntMMKernel.kind_reason(m) == "no int8 convolution kernel on CUDA"
    assert OnednnKernel.kind_reason(m) is None
    assert isinstance(m.kernel, DequantKernel)
