"""fusion.fusing: tc.fuse on whole models, explicit pairs, include/exclude, atomicity."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    ConfigError,
    SelectionError,
    UnsupportedModuleError,
)

from .conftest import check_fused, n_bn, randomize_bn


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_model_zoo_fuses_completely(name) -> None:
    kw = {"shortcut": "B"} if name == "resnet20" else {}
    model = randomize_bn(getattr(tc.models, name)(**kw))
    n_before = n_bn(model)
    check_fused(model, torch.randn(1, 3, 16, 16))
    assert n_bn(model) == 0
    pairs = tc.io.history(model)[-1]["config"]["pairs"]
    assert len(pairs) == n_before
    assert tc.io.history(model)[-1]["step"] == "fuse"


def test_fused_model_saves_and_loads() -> None:
    import tempfile

    model = randomize_bn(tc.models.resnet20()).eval()
    tc.fuse(model)
    x = torch.randn(1, 3, 32, 32)
    path = os.path.join(tempfile.mkdtemp(), "fused.safetensors")
    tc.save(model, path)
    fresh = tc.load(path, tc.models.resnet20().eval())
    assert n_bn(fresh) == 0
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_explicit_pairs_are_validated() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    with pytest.raises(SelectionError, match="Did you mean"):
        tc.fuse(model, pairs=[("0", "11")])
    with pytest.raises(ConfigError, match=r"\(layer, batchnorm\)"):
        tc.fuse(model, pairs=[("1", "0")])
    with pytest.raises(UnsupportedModuleError, match="not a BatchNorm"):
        tc.fuse(model, pairs=[("0", "2")])
    with pytest.raises(ConfigError):
        tc.fuse(model, pairs=["0"])
    with pytest.raises(UnsupportedModuleError, match=r"the output of '1', not the output of '0'"):
        tc.fuse(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4)), pairs=[("0", "2")])
    assert isinstance(model[1], nn.BatchNorm2d)


def test_include_exclude() -> None:
    x = torch.randn(1, 3, 32, 32)
    model = randomize_bn(tc.models.resnet20())
    check_fused(model, x, include=["layer1.*"])
    assert isinstance(model.layer1[0].bn1, nn.Identity) and isinstance(model.bn1, nn.BatchNorm2d)
    model = randomize_bn(tc.models.resnet20())
    check_fused(model, x, exclude=["layer3"])
    assert isinstance(model.layer3[0].bn1, nn.BatchNorm2d) and isinstance(model.bn1, nn.Identity)
    with pytest.raises(SelectionError):
        tc.fuse(model, include=["nope"])


def test_model_without_bn_is_a_no_op() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    assert tc.fuse(model) is model and isinstance(model[0], nn.Linear)


def test_atomic_on_failure(monkeypatch) -> None:
    model = randomize_bn(tc.models.resnet20())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}
    real = tc.fusion.fuse_conv_bn

    def flaky(layer, bn):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return real(layer, bn)

    monkeypatch.setattr(tc.fusion.fusing, "fuse_conv_bn", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        tc.fuse(model)
    assert n_bn(model) == 19
    assert model.state_dict().keys() == before.keys()


def test_fusion_does_not_change_the_mac_count() -> None:
    model = randomize_bn(tc.models.resnet20(shortcut="B")).eval()
    x = torch.randn(1, 3, 32, 32)
    before = tc.profile(model, x)
    channels = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    tc.fuse(model)
    after = tc.profile(model, x)
    assert after.total_macs == before.total_macs
    # each BN's gamma and beta (2 per channel) go; each bias-free conv gains a bias (1 per channel)
    assert after.total_params == before.total_params - channels


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fuse_on_cuda() -> None:
    model = randomize_bn(tc.models.mobilenet_v2()).cuda()
    check_fused(model, torch.randn(2, 3, 32, 32, device="cuda"))
    x = torch.randn(2, 3, 32, 32, device="cuda")
    fresh = randomize_bn(tc.models.resnet20(shortcut="A")).cuda()
    check_fused(fresh, x, example_inputs=x)
    assert n_bn(fresh) == 0
    assert all(p.is_cuda for p in model.parameters())
