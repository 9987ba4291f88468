"""torchcompress.tracing.capture: outputs of named modules, forward by forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CompressionStateError, SelectionError, UnsupportedModuleError
from torchcompress.testing import TinyCNN
from torchcompress.tracing import OutputCapture, capture_outputs, check_module_names


def test_outputs_are_the_modules_outputs_with_their_graph():
    torch.manual_seed(0)
    model = TinyCNN()
    x = torch.randn(2, 3, 8, 8)
    with capture_outputs(model, ["conv1", "bn2", "fc"]) as out:
        y = model(x)
    ref = model.bn2(model.conv2(model.relu(model.bn1(model.conv1(x)))))
    assert torch.equal(out["conv1"], model.conv1(x))
    assert torch.allclose(out["bn2"], ref)
    assert torch.equal(out["fc"], y)
    assert out["bn2"].requires_grad  # a loss on a feature trains the model
    out["bn2"].pow(2).mean().backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is None
    assert list(out) == ["conv1", "bn2", "fc"] and len(out) == 3
    # hooks gone, outputs still readable
    assert all(not m._forward_hooks for m in model.modules())
    assert out["fc"] is not None


def test_detach_clone_calls_clear_and_missing():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # one module called twice
    x = torch.randn(4, 3)
    cap = OutputCapture(model, ["0", "1"], detach=True)
    with cap:
        model(x)
        assert cap.missing() == []
        assert len(cap.calls("0")) == 2  # one per call
        assert torch.equal(cap["0"], cap.calls("0")[-1])  # the last one
        assert not cap["0"].requires_grad
        cap.clear()
        assert cap.missing() == ["0", "1"] and len(cap) == 0
        with pytest.raises(KeyError, match="has not run"):
            cap["0"]
    with pytest.raises(KeyError, match="not captured"):
        cap["2"]
    latest = OutputCapture(model, ["0"], all_calls=False)
    with latest:
        model(x)
        model(x + 1)
    assert len(latest.calls("0")) == 1 and torch.equal(latest["0"], shared(shared(x + 1).relu()))


def test_in_place_modification_after_capture_is_an_error_unless_cloned():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True))
    x = torch.randn(4, 3) - 1
    with capture_outputs(model, ["0"]) as cap:
        model(x)
    with pytest.raises(CompressionStateError, match=r"modified in place.*clone=True"):
        cap["0"]
    with capture_outputs(model, ["0"], clone=True) as cap:
        model(x)
    assert torch.equal(cap["0"], model[0](x))  # negative entries kept


def test_unknown_names_name_the_closest_ones_and_ddp_is_looked_through():
    model = tc.models.create("resnet20")
    with pytest.raises(SelectionError, match=r"no module 'layer1.0.conv3'.*'layer1.0.conv1'"):
        capture_outputs(model, ["layer1.0.conv3"])
    with pytest.raises(SelectionError, match="top-level modules: 'conv1', 'bn1'"):
        check_module_names(model, ["zzz"])
    with pytest.raises(SelectionError, match="must be a string"):
        check_module_names(model, [3])  # type: ignore[list-item]
    dp = nn.DataParallel(model)
    cap = capture_outputs(dp, "layer3")  # names relative to the wrapped model
    assert cap.names == ("layer3",) and cap.model is model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script
def test_attach_remove_and_scripted_modules():
    model = nn.Sequential(nn.Linear(2, 2))
    cap = OutputCapture(model, ["0"]).attach()
    assert cap.attached
    with pytest.raises(CompressionStateError, match="already attached"):
        cap.attach()
    model(torch.randn(1, 2))
    cap.remove()
    cap.remove()
    assert not cap.attached and len(cap) == 0 and not model[0]._forward_hooks
    scripted = nn.Sequential(torch.jit.script(nn.Linear(2, 2)))
    with pytest.raises(UnsupportedModuleError, match="TorchScript"):
        OutputCapture(scripted, ["0"])


def test_hooks_removed_when_the_forward_raises():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(3, 3))
    with pytest.raises(RuntimeError), capture_outputs(model, ["0", "1"]) as cap:
        model(torch.randn(1, 2))
    assert all(not m._forward_hooks for m in model.modules())
    assert cap.missing() == ["1"]


def test_structured_outputs_keep_their_structure():
    class Block(nn.Module):
        def forward(self, x):
            return x * 2, {"h": x + 1}

    model = nn.Sequential(Block())
    x = torch.ones(2)
    with capture_outputs(model, ["0"], clone=True) as cap:
        model(x)
    a, b = cap["0"]
    assert torch.equal(a, 2 * x) and torch.equal(b["h"], x + 1)
