"""Per-input-channel scales: folds where they are correct, explicit scales elsewhere, float outputs
unchanged, the fallback when a fold would move the outputs, and save/load of the explicit scale."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.calibration.dataflow import analyze
from torchcompress.errors import ConfigError
from torchcompress.quant.scaling import ABSORBERS, InputScaled, find_fold, scale_inputs


def _scale(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 3 + 0.2


class PreNorm(nn.Module):
    """norm -> (q, k) siblings; relu MLP (fc1 -> relu -> fc2); a gated product (gate * up)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.gate, self.up, self.down = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(12, 8)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.q(h) * torch.sigmoid(self.k(h))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return x + self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


def test_folds_into_norm_linear_through_relu_and_product() -> None:
    block, x = PreNorm(), torch.randn(3, 5, 8)
    before = block(x)
    flow = analyze(block, Batch(args=(x,)))
    groups = {tuple(g.layers): g for g in flow.groups}
    assert set(groups) == {("q", "k"), ("fc1",), ("fc2",), ("gate", "up"), ("down",)}
    folds = {k: find_fold(flow, g) for k, g in groups.items()}
    assert (folds[("q", "k")].how, folds[("q", "k")].name) == ("norm", "norm")
    assert (folds[("fc2",)].how, folds[("fc2",)].name) == ("linear", "fc1")  # through the ReLU
    assert (folds[("down",)].how, folds[("down",)].name) == ("product", "up")
    assert folds[("fc1",)] is None  # its input is the residual stream, read by the add too
    for i, (k, g) in enumerate(groups.items()):
        how, _, renamed = scale_inputs(block, flow, g, _scale(g.tensor.shape[-1], i))
        assert (how == "explicit") == (folds[k] is None)
        assert bool(renamed) == (how == "explicit")
    assert isinstance(block.fc1, InputScaled) and isinstance(block.q, nn.Linear)
    torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-5)


def test_fold_that_moves_outputs_falls_back_to_an_explicit_scale() -> None:
    class OnePlusNorm(nn.Module):  # (1 + w) * normalised x: folding w / s would be wrong
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6) * 0.1)

        def forward(self, x):
            return (1 + self.weight) * torch.nn.functional.layer_norm(x, (6,))

    OnePlusNorm.__name__ = "GemmaRMSNorm"
    block = nn.Sequential(OnePlusNorm(), nn.Linear(6, 4))
    x = torch.randn(4, 6)
    ref = block(x)
    flow = analyze(block, Batch(args=(x,)))
    assert find_fold(flow, flow.groups[0]).how == "norm"  # looks absorbable by its name

    def unchanged() -> bool:
        return torch.allclose(block(x), ref, atol=1e-5)

    how, _, renamed = scale_inputs(block, flow, flow.groups[0], _scale(6), verify=unchanged)
    assert (how, renamed) == ("explicit", {"1": "1.layer"})
    torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)


def test_fold_can_be_refused_and_scales_are_checked() -> None:
    block, x = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4)), torch.randn(2, 4)
    flow = analyze(block, Batch(args=(x,)))
    assert scale_inputs(block, flow, flow.groups[0], _scale(4), fold=False)[0] == "explicit"
    block = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 4))
    flow = analyze(block, Batch(args=(x,)))
    with pytest.raises(ConfigError, match="positive"):
        scale_inputs(block, flow, flow.groups[0], -_scale(4))
    with pytest.raises(ConfigError, match="positive"):
        scale_inputs(block, flow, flow.groups[0], _scale(3))


def test_registry_lists_the_absorbers() -> None:
    assert ABSORBERS.names() == ["norm", "linear", "product", "value"]


def test_input_scaled_round_trips_through_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    flow = analyze(model, Batch(args=(torch.randn(2, 4),)))
    scale_inputs(model, flow, flow.groups[1], _scale(6))
    tc.quantize(model, tc.QuantConfig(mode="dynamic"))
    assert isinstance(model[2], InputScaled) and isinstance(model[2].layer, tc.quant.QuantLinear)
    path = os.path.join(tmp_path, "m.safetensors")
    tc.save(model, path)
    fresh = tc.load(path, nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)))
    x = torch.randn(5, 4)
    torch.testing.assert_close(fresh(x), model(x))
    assert torch.equal(fresh[2].inv_scale, model[2].inv_scale)
    conv = tc.convert(model)
    torch.testing.assert_close(conv(x), fresh(x), rtol=1e-4, atol=1e-4)
    assert tc.profile(conv, x).total_macs > 0
