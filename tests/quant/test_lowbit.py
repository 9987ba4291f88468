"""Runtime modes of weight-only and k-means layers (tc.convert(runtime=...)) and their kernels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CompressionStateError, ConfigError
from torchcompress.quant import functional as QF
from torchcompress.quant.int_layer import DequantKernel
from torchcompress.quant.kernels import _fbgemm_engine
from torchcompress.quant.lowbit import CudaInt4Kernel, W4A8Kernel


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32)).eval()


W4_CHANNEL = tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None)
W4_GROUP = tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=32), activation=None)


@pytest.mark.parametrize("cfg", [W4_CHANNEL, W4_GROUP])
@pytest.mark.parametrize("runtime", ["cache", "lowbit"])
def test_weight_only_modes_compute_the_fake_quant_model(cfg, runtime: str) -> None:
    q = tc.quantize(_mlp(), cfg)
    c = tc.convert(copy.deepcopy(q), runtime=runtime)
    x = torch.randn(7, 64)
    with torch.no_grad():
        assert torch.equal(c(x), q(x))
        assert torch.equal(c(x), q(x))  # the second call (cached weights) too
    k = c[0].kernel
    assert isinstance(k, DequantKernel) and k.cache == (runtime == "cache")
    assert f"runtime={runtime!r}" in repr(c[0])
    assert ("cached in float" in repr(c[0])) == (runtime == "cache")
    held = c[0].runtime_bytes() - c[0].stored_bytes()
    assert held == (96 * 64 * 4 if runtime == "cache" else 0)


def test_default_is_cache_and_the_note_gives_bytes_at_run_time() -> None:
    c = tc.convert(tc.quantize(_mlp(), W4_CHANNEL))
    assert c[0].runtime == "cache"
    report = tc.profile(c, torch.randn(1, 64))
    assert "cached in float" in report["0"].note and "in memory at run time" in report["0"].note
    assert report["0"].bytes == c[0].stored_bytes()  # the bytes column: what is stored


def test_the_cache_follows_state_changes_and_device_moves() -> None:
    q = tc.quantize(_mlp(), W4_CHANNEL)
    c = tc.convert(copy.deepcopy(q))
    x = torch.randn(3, 64)
    with torch.no_grad():
        c(x)
        c[0].weight_scale.mul_(2)  # in place: the cached weight is stale
        want = nn.functional.linear(x, c[0].dequantized_weight(), c[0].bias)
        assert torch.equal(c[0](x), want)
        c.double()
        assert c(x.double()).dtype == torch.float64


def test_runtime_is_saved_and_restored(tmp_path) -> None:
    c = tc.convert(tc.quantize(_mlp(), W4_CHANNEL), runtime="lowbit")
    path = tmp_path / "m.safetensors"
    tc.save(c, path)
    loaded = tc.load(path, _mlp())
    assert loaded[0].runtime == "lowbit"
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), c(x))
    assert loaded[0].qweight.dtype == torch.uint8  # low-bit on disk and after loading


def test_set_runtime_switches_a_converted_or_kmeans_model(tmp_path) -> None:
    c = tc.convert(tc.quantize(_mlp(), W4_CHANNEL))
    assert tc.quant.set_runtime(c, "lowbit")[2].runtime == "lowbit"
    k = tc.kmeans_quantize(_mlp(), bits=4)
    x = torch.randn(5, 64)
    with torch.no_grad():
        y = k(x)
        assert k[0].runtime == "cache" and "cached in float" in repr(k[0])
        assert torch.equal(k(x), y)
        tc.quant.set_runtime(k, "lowbit")
        assert "at every call" in repr(k[0])
        assert torch.equal(k(x), y)
    tc.save(k, tmp_path / "k.safetensors")
    assert tc.load(tmp_path / "k.safetensors", _mlp())[0].runtime == "lowbit"
    assert tc.kmeans_quantize(_mlp(), bits=2, runtime="lowbit")[0].runtime == "lowbit"
    with pytest.raises(ConfigError, match="runtime"):
        tc.quant.set_runtime(c, "fast")
    with pytest.raises(ConfigError, match="runtime"):
        tc.convert(tc.quantize(_mlp(), W4_CHANNEL), runtime="fast")
    with pytest.raises(ConfigError, match="runtime"):
        tc.kmeans_quantize(_mlp(), runtime="w4a8")
    with pytest.raises(CompressionStateError, match=r"tc\.convert"):
        tc.quant.set_runtime(_mlp(), "cache")


def test_kmeans_cache_follows_state_changes() -> None:
    k = tc.kmeans_quantize(_mlp(), bits=3)
    x = torch.randn(2, 64)
    with torch.no_grad():
        k(x)
        k[0].codebook.mul_(0.5)
        want = nn.functional.linear(x, k[0].weight, k[0].bias)
        assert torch.equal(k[0](x), want)
    assert k[0].runtime_bytes() > k[0].indices.numel()


@pytest.mark.skipif(_fbgemm_engine() is None, reason="needs fbgemm")
def test_w4a8_runs_fbgemm_on_dynamically_quantized_activations() -> None:
    q = tc.quantize(_mlp(), W4_CHANNEL)
    c = tc.convert(copy.deepcopy(q), runtime="w4a8")
    assert isinstance(c[0].kernel, W4A8Kernel) and "runtime='w4a8'" in repr(c[0])
    x = torch.randn(9, 64)
    with torch.no_grad():
        got = c[0](x)
        levels = 127 if c[0].kernel.reduce else 255
        s, z = QF.tensor_qparams(x, 0, levels, symmetric=False)
        xq = QF.fake_quantize(x, s, z, 0, levels)
        want = nn.functional.linear(xq, c[0].dequantized_weight(), c[0].bias)
    assert torch.allclose(got, want, atol=1e-4)
    assert c[0].runtime_bytes() - c[0].stored_bytes() >= 96 * 64  # the int8 copy


def test_w4a8_falls_back_to_the_cache_where_fbgemm_cannot_run_the_layer() -> None:
    c = tc.convert(tc.quantize(_mlp(), W4_GROUP), runtime="w4a8")
    k = c[0].kernel
    assert isinstance(k, DequantKernel) and k.cache
    assert "group-wise" in repr(c[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_int4_kernel_runs_group_wise_4_bit_weights() -> None:
    m = nn.Sequential(nn.Linear(256, 128)).eval().cuda()
    cfg = tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=64), activation=None)
    q = tc.quantize(m, cfg)
    c = tc.convert(copy.deepcopy(q), runtime="lowbit")
    x = torch.randn(5, 256, device="cuda")
    with torch.no_grad():
        got = c(x)
        want = q(x.bfloat16().float())
    if isinstance(c[0].kernel, CudaInt4Kernel):
        assert torch.allclose(got, want, atol=0.05, rtol=0.02)
    else:
        assert "int4" in repr(c[0]) or "runtime='lowbit'" in repr(c[0])
