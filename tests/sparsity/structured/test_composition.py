"""Saving channel-pruned models, and the other families on them (a pruned model is plain and dense)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.testing import MixedConvNet

from .conftest import pruned
from .models import MHANet


@pytest.mark.hf
def test_hf_conv1d_layers(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(Conv1D(12, 6), nn.GELU(), Conv1D(4, 12)).eval()

    x = torch.randn(2, 3, 6)
    m = build()
    tc.prune_channels(m, x, 0.5)
    assert m[0].weight.shape == (6, 6) and m[0].nf == 6 and m[2].weight.shape == (6, 4)
    assert m[2].nx == 6 if hasattr(m[2], "nx") else True
    path = tmp_path / "c.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, build())
    torch.testing.assert_close(fresh(x), m(x))


# --- the other families on a pruned model ---------------------------------------------------------


def test_prune_masks_on_a_pruned_model(tmp_path: Path) -> None:
    x = torch.randn(2, 3, 16, 16)
    m = pruned(MixedConvNet(), x)
    tc.prune(m, tc.PruneConfig(sparsity=0.5))
    assert tc.sparsity_report(m).sparsity == pytest.approx(0.5, abs=0.02)
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, MixedConvNet().eval())
    torch.testing.assert_close(fresh(x), m(x))
    tc.finalize(m)
    assert m.conv3.weight.shape == (16, 8, 3, 3)


def test_quantize_and_convert_a_pruned_model() -> None:
    x = torch.randn(4, 3, 16, 16)
    m = pruned(MixedConvNet(), x)
    dense = copy.deepcopy(m)
    q = tc.quantize(m, tc.QuantConfig(), [torch.randn(8, 3, 16, 16) for _ in range(3)])
    y, ref = q(x), dense(x)
    assert (y - ref).abs().max() < 0.2 * ref.abs().max() + 1e-3
    c = tc.convert(copy.deepcopy(q))
    with torch.no_grad():
        yq = q(x)
        torch.testing.assert_close(c(x), yq, rtol=0.05, atol=0.05 * float(yq.abs().max()))
    prof = tc.profile(c, x)
    assert prof.total_params > 0 and prof.total_macs > 0


def test_factorize_a_pruned_model() -> None:
    x = torch.randn(2, 5, 6)
    m = pruned(MHANet(), x)
    ref = m(x)
    tc.factorize(m, tc.LowRankConfig(rank=4), include=["ff1", "ff2"])
    assert type(m.ff1).__name__ != "Linear"
    assert m(x).shape == ref.shape


def test_fuse_a_pruned_model() -> None:
    torch.manual_seed(0)
    m = tc.models.resnet.CifarResNet(20, shortcut="B").eval()
    x = torch.randn(2, 3, 32, 32)
    tc.prune_channels(m, x, 0.5)
    ref = m(x)
    tc.fuse(m)
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.onnx
def test_export_onnx_of_a_pruned_quantized_model(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, 16, 16)
    m = pruned(MixedConvNet(), x)
    q = tc.quantize(m, tc.QuantConfig(), [torch.randn(4, 3, 16, 16) for _ in range(2)])
    path = tc.export_onnx(q, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
    assert y.shape == (2, 10)
    assert (y - q(x)).abs().max() < 0.1 * q(x).abs().max() + 1e-3
