"""The builder: one recorded forward into the channel graph; models it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.errors import (
    CompressionStateError,
    ShapeError,
    UnsupportedModuleError,
)
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.builder import check_handlers, output_shapes
from torchcompress.testing import TinyCNN

from .conftest import X, states_equal


def test_model_that_does_not_run_names_the_module() -> None:
    m = TinyCNN().eval()
    with pytest.raises(ShapeError, match=r"module 'conv1' \(Conv2d\)"):
        tc.prune_channels(m, torch.randn(2, 5, 8, 8), 0.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_model_cannot_be_recorded() -> None:
    m = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with pytest.raises(UnsupportedModuleError, match="TorchScript"):
        tc.prune_channels(m, torch.randn(1, 4), 0.5)


def test_masked_model_must_prune_channels_first() -> None:
    m = TinyCNN().eval()
    tc.prune(m, tc.PruneConfig(sparsity=0.5))
    with pytest.raises(CompressionStateError, match="prune channels first"):
        tc.prune_channels(m, X, 0.5)


def test_analysis_of_a_small_cnn() -> None:
    m = TinyCNN().eval()
    before = copy.deepcopy(m.state_dict())
    a = analyse(m, example_batch(m, torch.randn(2, 3, 8, 8)))
    assert states_equal(m.state_dict(), before)  # analysing changes nothing
    assert [(g.name, len(g.units), g.width) for g in a.groups] == [
        ("conv1", 8, 1),
        ("conv2", 16, 1),
    ]
    g1 = {str(x) for x in a.groups[0].members}
    assert {"conv1.weight[0]", "bn1.weight[0]", "bn1.running_var[0]", "conv2.weight[1]"} <= g1
    assert "fc.weight[1]" in {str(x) for x in a.groups[1].members}
    assert a.outputs == [(2, 4)]
    assert set(a.fixed.values()) == {"the model's outputs keep their shape"}  # fc's 4 outputs
    assert sum(macs for macs, _ in a.costs) == tc.profile(m, torch.randn(2, 3, 8, 8)).total_macs
    assert a.unknown == {}


def test_ignore_fixes_the_protected_layers_channels() -> None:
    m = TinyCNN().eval()
    a = analyse(m, example_batch(m, X), ignore=["conv2"])
    assert [g.name for g in a.groups] == ["conv1"]
    assert "conv2 is protected (ignore=)" in set(a.fixed.values())


def test_an_op_on_a_modules_own_weight_is_reported_unknown() -> None:
    class OwnWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 6)
            self.scale = nn.Parameter(torch.ones(6))
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.einsum("bi,i->bi", self.lin(x), self.scale))

    m = OwnWeight().eval()
    a = analyse(m, example_batch(m, torch.randn(3, 4)))
    assert a.unknown == {"": "`einsum` on 'scale'"}
    assert a.groups == []  # einsum is not understood: its channels stay
    assert any("op `einsum` is not understood" in why for why in a.fixed.values())
    with pytest.raises(
        UnsupportedModuleError, match=r"'\(model\)' \(OwnWeight\): computes `einsum`"
    ):
        check_handlers(m, a, [])


def test_output_shapes_of_nested_outputs() -> None:
    out = {"a": torch.zeros(2, 3), "b": (torch.zeros(1), [torch.zeros(4, 5)]), "c": 3}
    assert output_shapes(out) == [(2, 3), (1,), (4, 5)]
