"""What every run measures: latency in interleaved rounds, output agreement, sizes."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.recipe.document import LatencyConfig
from torchcompress.recipe.measure import output_cosine, summary_figures, time_models
from torchcompress.recipe.specs import DataBundle
from torchcompress.testing import MixedConvNet


class Sleepy(nn.Module):
    """Takes ``seconds`` per call: a model whose latency is known."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.lin(x)


def test_latency_ratios_are_medians_of_interleaved_rounds() -> None:
    cfg = LatencyConfig(batch_size=1, min_rounds=3, max_rounds=6, spread=0.5, round_time=0.02)
    lines: list[str] = []
    t = time_models(
        {"base": Sleepy(0.004), "half": Sleepy(0.002)},
        Batch(args=(torch.zeros(1, 2),)),
        cfg,
        say=lines.append,
    )
    assert t["base"]["ratio"] == 1.0 and t["base"]["spread"] == 0.0
    assert 0.3 < t["half"]["ratio"] < 0.8  # sleep() is a floor, not exact
    assert 3 <= t["half"]["rounds"] <= 6 and t["half"]["ms"] > 1.5
    assert lines and lines[0].startswith(f"latency: {t['half']['rounds']} interleaved rounds")


def test_output_cosine_ignores_padding_and_compares_first_tensors() -> None:
    class Enc(nn.Module):
        def __init__(self, noise: float) -> None:
            super().__init__()
            self.noise = noise

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
            h = input_ids.float().unsqueeze(-1).repeat(1, 1, 4)
            return {"last_hidden_state": h + self.noise * (1 - attention_mask).unsqueeze(-1)}

    batch = {
        "input_ids": torch.tensor([[1, 2, 3], [4, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    }
    # the two models differ only at the padded position: identical where it counts
    assert output_cosine(Enc(0.0), Enc(100.0), [batch]) == pytest.approx(1.0)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    assert output_cosine(a, a, [torch.randn(4, 3)]) == pytest.approx(1.0)
    assert output_cosine(a, b, [torch.randn(4, 3)]) < 1.0
    assert output_cosine(a, nn.Linear(3, 5), [torch.randn(4, 3)]) is None


def test_summary_figures_of_a_pruned_model() -> None:
    torch.manual_seed(0)
    train, test = tc.data.digits(image_size=8, batch_size=500)
    model = MixedConvNet().eval()
    pruned = tc.prune(MixedConvNet().eval(), tc.PruneConfig(sparsity=0.5))
    data = DataBundle(train, test, calib=[next(iter(train))])
    x = next(iter(test))[0][:1]
    f = summary_figures(pruned, model, data, Batch(args=(x,)))
    assert f["samples"] == 450 and 0 <= f["accuracy"] <= 1
    assert f["nonzero_params"] < f["params"] and f["effective_macs"] < f["macs"]
    assert -1 <= f["output_cosine"] < 1 and f["layers"][0]["name"] == "conv1"
