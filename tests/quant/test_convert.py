"""tc.convert: integer storage, kernels, numerics against the fake-quant model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.costs import lookup_cost
from torchcompress.errors import CompressionStateError
from torchcompress.quant import IntLayer
from torchcompress.quant.hardware import int8_saturates
from torchcompress.quant.kernels import DequantKernel, OnednnKernel, _onednn_ok

from .test_ptq import TinyResNet, Untraceable, _randomize_bn, mlp

needs_onednn = pytest.mark.skipif(not _onednn_ok(), reason="no oneDNN int8 kernels in this build")


def _pair(
    model: nn.Module, cfg: tc.QuantConfig, data: object, **kw: object
) -> tuple[nn.Module, nn.Module]:
    q = tc.quantize(copy.deepcopy(model), cfg, data, **kw)
    return q, tc.convert(copy.deepcopy(q))


def _step_bound(q: nn.Module, x: torch.Tensor) -> float:
    """One input step times the largest |weight| row sum: the effect of one rounding tie."""
    lin = next(m for m in q.modules() if hasattr(m, "weight_quant"))
    return float(lin.weight.abs().sum(1).max()) * 0.05


@needs_onednn
def test_static_linear_onednn_matches_fake_quant() -> None:
    m = Untraceable().eval()
    data = [torch.randn(16, 8) for _ in range(3)]
    q, c = _pair(m, tc.QuantConfig(), data, graph="layer")
    assert isinstance(c.fc1, IntLayer) and isinstance(c.fc1.kernel, OnednnKernel)
    assert "oneDNN" in repr(c.fc1)
    x = torch.randn(32, 8)
    assert torch.allclose(c(x), q(x), atol=1e-5)


def test_dynamic_linear_fbgemm_matches_fake_quant() -> None:
    m = mlp()
    q, c = _pair(m, tc.QuantConfig(mode="dynamic"), None)
    x = torch.randn(3, 5, 16) * 4  # 3-D input
    assert torch.allclose(c(x), q(x), atol=1e-5)
    if "x86" in torch.backends.quantized.supported_engines:
        assert c[0].kernel.name == "fbgemm_dynamic"
        assert "fbgemm" in c[0].kernel_note()


@needs_onednn
def test_per_token_matches_fake_quant() -> None:
    m = mlp()
    for sym in (True, False):
        cfg = tc.QuantConfig(
            mode="dynamic", activation=tc.IntSpec(8, symmetric=sym, signed=sym, granularity="token")
        )
        q, c = _pair(m, cfg, None)
        x = torch.randn(4, 7, 16)
        x[:, 0] *= 30
        assert c[0].kernel.name == "token"
        assert torch.allclose(c(x), q(x), atol=1e-4)


@needs_onednn
def test_conv2d_per_layer_and_graph() -> None:
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2, groups=4),
        nn.Flatten(),
    ).eval()
    data = [torch.randn(2, 3, 9, 9) for _ in range(3)]
    x = torch.randn(3, 3, 9, 9)
    for graph in ("layer", "auto"):
        q, c = _pair(m, tc.QuantConfig(), data, graph=graph)
        assert all(isinstance(c[i].kernel, OnednnKernel) for i in (0, 2))
        assert torch.allclose(c(x), q(x), atol=1e-4), graph


def test_fallbacks_say_why() -> None:
    m = mlp()
    cases = {
        "group-wise": tc.QuantConfig(
            weight=tc.IntSpec(4, granularity="group", group_size=8), mode="dynamic"
        ),
        "asymmetric weights": tc.QuantConfig(
            weight=tc.IntSpec(8, symmetric=False, granularity="channel"), mode="dynamic"
        ),
        "weight-only": tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None),
        "do not fit int8": tc.QuantConfig(
            weight=tc.IntSpec(16, granularity="channel"), mode="dynamic"
        ),
    }
    x = torch.randn(5, 16)
    for why, cfg in cases.items():
        q, c = _pair(m, cfg, None)
        assert isinstance(c[0].kernel, DequantKernel), why
        assert "dequantized on the fly" in repr(c[0]) and why in repr(c[0]), (why, repr(c[0]))
        assert torch.allclose(c(x), q(x), atol=1e-5), why


def test_saturating_cpu_never_runs_unsafe_kernels() -> None:
    """With reduce_range='none', full 8-bit pairs would saturate on AVX2: convert stays exact."""
    m = mlp()
    q, c = _pair(m, tc.QuantConfig(mode="dynamic", reduce_range="none"), None)
    x = torch.randn(64, 16) * 3
    assert torch.allclose(c(x), q(x), atol=1e-5)
    if int8_saturates():
        assert isinstance(c[0].kernel, DequantKernel)
        assert "VNNI" in repr(c[0])


@pytest.mark.skipif(
    not int8_saturates() or not _onednn_ok(), reason="needs a CPU whose int8 kernels saturate"
)
def test_full_range_pairs_really_saturate_here() -> None:
    """The hazard reduce_range avoids: forcing the int8 kernel on full-range pairs is wrong."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 64)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.randn(64, 256).sign() * 0.1)  # every weight at +-127
    data = [torch.rand(32, 256) * 4 for _ in range(2)]
    q, c = _pair(m, tc.QuantConfig(reduce_range="none"), data, graph="layer")
    layer = c[0]
    kernel = OnednnKernel(layer)  # bypass the safety check
    x = torch.rand(32, 256) * 4
    with torch.no_grad():
        wrong = (kernel(layer, x, None) - q(x)).abs().max()
    step = float(layer.weight_scale.max()) * float(layer.input_scale)
    assert float(wrong) > 2 * step
    # and the converted model (dequantizing fallback) is exact
    assert torch.allclose(c(x), q(x), atol=1e-5)


def test_storage_is_integer_and_packed() -> None:
    m = nn.Sequential(nn.Linear(64, 32, bias=False)).eval()
    n = 64 * 32
    for bits, nbytes in ((8, n), (4, n // 2), (3, n // 2), (2, n // 4)):
        cfg = tc.QuantConfig(weight=tc.IntSpec(bits, granularity="channel"), activation=None)
        c = tc.convert(tc.quantize(copy.deepcopy(m), cfg))
        layer = c[0]
        assert layer.qweight.dtype == torch.uint8 and layer.qweight.numel() == nbytes
        assert layer.stored_bytes() == nbytes + 32 * 4 + 4  # + scales + one (zero) zero point
        assert not any(
            p.is_floating_point() and p.numel() == n for p in layer.state_dict().values()
        )
        # the integers really are what the fake-quant layer used
        w = layer.dequantized_weight()
        assert w.unique().numel() <= 32 * 2**bits


def test_costs_report_stored_bytes_and_kernel() -> None:
    m = mlp()
    c = tc.convert(tc.quantize(copy.deepcopy(m), tc.QuantConfig(mode="dynamic")))
    x = torch.randn(2, 16)
    out = c[0](x)
    cost = lookup_cost(c[0])(c[0], (x,), {}, out)
    assert cost.bytes == c[0].stored_bytes()
    assert cost.macs == 2 * 16 * 32
    assert cost.params == 16 * 32 + 32
    assert "kernel" in cost.note or "dequantized" in cost.note
    p = tc.profile(c, x)
    fp = tc.profile(m, x)
    assert p.total_bytes < 0.4 * fp.total_bytes


@needs_onednn
def test_graph_mode_resnet_converts_exactly() -> None:
    m = TinyResNet().eval()
    _randomize_bn(m)
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    q, c = _pair(m, tc.QuantConfig(), data)
    assert c.quant_graph.converted
    code = c.quant_graph.code()
    assert "dequantize_u8" not in code.split("head")[0]  # integers all the way to the head
    assert c.block.conv2.has_accum and c.block.conv2.unary == "relu"
    x = torch.randn(6, 3, 8, 8)
    yq, yc = q(x), c(x)
    # equal up to rounding ties (each flips one integer by one step)
    assert (yc - yq).abs().max() <= 0.05 * (yq - m(x)).abs().max() + 1e-4


def test_convert_errors() -> None:
    with pytest.raises(CompressionStateError, match="quantize"):
        tc.convert(mlp())
    q = tc.quantize(mlp(), tc.QuantConfig(), [torch.randn(4, 16)], graph="layer")
    q[0].input_quant.calibrated = False
    with pytest.raises(CompressionStateError, match="calibrated"):
        tc.convert(q)
    assert not isinstance(q[0], IntLayer)


def test_dtypes_and_device_moves() -> None:
    m = mlp().to(torch.bfloat16)
    c = tc.convert(tc.quantize(m, tc.QuantConfig(mode="dynamic")))
    y = c(torch.randn(2, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert c[0].weight_scale.dtype == torch.float32
    c.to("cpu")
    assert c(torch.randn(2, 16, dtype=torch.bfloat16)).shape == (2, 8)


def test_deepcopy_keeps_working() -> None:
    q = tc.quantize(TinyResNet().eval(), tc.QuantConfig(), [torch.randn(2, 3, 8, 8)])
    c = tc.convert(q)
    x = torch.randn(2, 3, 8, 8)
    y = c(x)
    d = copy.deepcopy(c)
    assert torch.equal(d(x), y)
    assert d.forward.__self__ is d


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_int_mm_matches_fake_quant() -> None:
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval().cuda()
    for cfg in (
        tc.QuantConfig(mode="dynamic"),
        tc.QuantConfig(mode="dynamic", activation=tc.IntSpec(8, granularity="token")),
    ):
        q, c = _pair(m, cfg, None)
        x = torch.randn(40, 64, device="cuda")
        assert c[0].kernel.name == "cuda_int_mm"
        assert torch.allclose(c(x), q(x), atol=1e-4)
    data = [torch.randn(16, 64, device="cuda") for _ in range(2)]
    q, c = _pair(m, tc.QuantConfig(), data, graph="layer")
    x = torch.randn(8, 64, device="cuda")  # fewer rows than _int_mm's minimum: padded
    assert c[0].kernel.name == "cuda_int_mm"
    assert torch.allclose(c(x), q(x), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_model_falls_back_exactly() -> None:
    m = TinyResNet().eval().cuda()
    q, c = _pair(m, tc.QuantConfig(), [torch.randn(4, 3, 8, 8, device="cuda")])
    x = torch.randn(2, 3, 8, 8, device="cuda")
    assert torch.allclose(c(x), q(x), atol=1e-4)
    assert "dequantized on the fly" in repr(c.stem)


def test_linear_relu_fusion_in_graph() -> None:
    m = mlp()
    q, c = _pair(m, tc.QuantConfig(), [torch.randn(8, 16) for _ in range(2)])
    assert c[0].unary == "relu" and c[0].out is not None
    x = torch.randn(4, 16)
    assert torch.allclose(c(x), q(x), atol=1e-4)
    assert torch.allclose(q(x), m(x), atol=0.1)


@needs_onednn
def test_bfloat16_graph_model() -> None:
    m = TinyResNet().eval().to(torch.bfloat16)
    data = [torch.randn(4, 3, 8, 8, dtype=torch.bfloat16) for _ in range(2)]
    q, c = _pair(m, tc.QuantConfig(), data)
    x = torch.randn(3, 3, 8, 8, dtype=torch.bfloat16)
    yq, yc = q(x), c(x)
    assert yq.dtype == yc.dtype == torch.bfloat16
    assert (yc.float() - yq.float()).abs().max() < 0.1 * yq.float().abs().max() + 0.05


def test_unfused_residual_structure() -> None:
    """fuse_residual=False: the convolution output and the sum are quantized separately."""
    m = TinyResNet().eval()
    _randomize_bn(m)
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    q, c = _pair(m, tc.QuantConfig(), data, fuse_residual=False)
    assert (
        "output_add" in q.quant_graph.quantizers
        and "output_block_conv2" in q.quant_graph.quantizers
    )
    assert not c.block.conv2.has_accum
    x = torch.randn(5, 3, 8, 8)
    assert (c(x) - q(x)).abs().max() <= 0.05 * (q(x) - m(x)).abs().max() + 1e-4


class Volumetric(nn.Module):
    """A 3-D convolution (no int8 kernel here) between a Conv2d-free stem and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_every_registered_kind_quantizes_conv3d_included(tmp_path) -> None:
    """Conv3d is a layer kind of the shared layer model: quantized, converted (dequantized on the
    fly, saying why), saved and loaded, profiled from its geometry."""
    torch.manual_seed(0)
    m = Volumetric().eval()
    calib = [torch.randn(2, 2, 4, 4, 4) for _ in range(2)]
    q, c = _pair(m, tc.QuantConfig(), calib)
    assert type(q.conv).__name__ == "QuantConv3d" and q.conv.geometry.kernel_size == (3, 3, 3)
    assert isinstance(c.conv, IntLayer) and isinstance(c.conv.kernel, DequantKernel)
    assert "3-D convolution" in repr(c.conv)
    x = torch.randn(3, 2, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(c(x), q(x), atol=1e-4)
    tc.save(c, tmp_path / "c.safetensors")
    loaded = tc.load(tmp_path / "c.safetensors", Volumetric().eval())
    with torch.no_grad():
        assert torch.equal(loaded(x), c(x))
    prof = tc.profile(c, x)
    assert prof["conv"].macs == 3 * 64 * 4 * (2 // 2 * 27)
