"""tc.fuse: BatchNorm folding is exact, finds its pairs, and refuses unsafe ones."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    ConfigError,
    SelectionError,
    ShapeError,
    UnsupportedModuleError,
)
from torchcompress.fusion import bn_scale_shift, fold_bn_weights, fuse_conv_bn, fusion_pairs

_BN = nn.modules.batchnorm._BatchNorm


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters, so that folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g))
    return model


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, _BN) for m in model.modules())


def check_fused(model: nn.Module, x: torch.Tensor, **kw) -> nn.Module:
    model.eval()
    with torch.no_grad():
        ref = model(x)
    out_model = tc.fuse(model, **kw)
    assert out_model is model
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, ref.abs().max().item()))
    return model


# --- the maths --------------------------------------------------------------------------------


def test_fold_bn_weights_formula() -> None:
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    mean, var = torch.randn(4), torch.rand(4) + 0.5
    gamma, beta, eps = torch.randn(4), torch.randn(4), 1e-3
    fw, fb = fold_bn_weights(w, b, mean, var, eps, gamma, beta)
    s = gamma / torch.sqrt(var + eps)
    torch.testing.assert_close(fw, w * s[:, None, None, None])
    torch.testing.assert_close(fb, (b - mean) * s + beta)
    # no bias, no affine
    fw0, fb0 = fold_bn_weights(w, None, mean, var, eps)
    s0 = 1 / torch.sqrt(var + eps)
    torch.testing.assert_close(fw0, w * s0[:, None, None, None])
    torch.testing.assert_close(fb0, -mean * s0)
    scale, shift = bn_scale_shift(mean, var, eps, gamma, beta)
    torch.testing.assert_close(scale, s)
    torch.testing.assert_close(shift, beta - mean * s)
    with pytest.raises(ShapeError, match="running_mean"):
        fold_bn_weights(w, b, torch.zeros(5), var, eps)


def test_fold_bn_weights_is_differentiable_and_keeps_dtype() -> None:
    w = torch.randn(3, 2, requires_grad=True)
    gamma = torch.randn(3, requires_grad=True)
    fw, fb = fold_bn_weights(w, None, torch.zeros(3), torch.ones(3), 1e-5, gamma, torch.zeros(3))
    (fw.sum() + fb.sum()).backward()
    assert w.grad is not None and gamma.grad is not None
    fw16, _ = fold_bn_weights(w.detach().half(), None, torch.zeros(3), torch.ones(3), 1e-5)
    assert fw16.dtype == torch.float16


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("make", "bn", "shape"),
    [
        (lambda b: nn.Conv2d(4, 8, 3, padding=1, bias=b), nn.BatchNorm2d, (2, 4, 7, 7)),
        (lambda b: nn.Conv2d(8, 8, 3, groups=8, bias=b), nn.BatchNorm2d, (2, 8, 7, 7)),  # depthwise
        (lambda b: nn.Conv2d(8, 12, 3, groups=4, stride=2, bias=b), nn.BatchNorm2d, (2, 8, 9, 9)),
        (lambda b: nn.Conv1d(3, 6, 5, dilation=2, bias=b), nn.BatchNorm1d, (2, 3, 20)),
        (lambda b: nn.Linear(5, 7, bias=b), nn.BatchNorm1d, (6, 5)),
        (lambda b: nn.Conv3d(2, 4, 3, bias=b), nn.BatchNorm3d, (1, 2, 5, 5, 5)),
    ],
)
def test_fused_pair_matches_unfused(make, bn, shape, bias, affine) -> None:
    torch.manual_seed(0)
    layer = make(bias)
    model = randomize_bn(nn.Sequential(layer, bn(layer.weight.shape[0], affine=affine), nn.ReLU()))
    check_fused(model, torch.randn(*shape))
    assert isinstance(model[1], nn.Identity)
    assert type(model[0]) is type(layer) and model[0].bias is not None
    assert n_bn(model) == 0


def test_fuse_conv_bn_keeps_hyperparameters() -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode="reflect")
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    fused = fuse_conv_bn(conv, bn)
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert fused.padding_mode == "reflect" and fused.groups == 2 and fused.stride == (2, 2)
    with pytest.raises(UnsupportedModuleError, match="running statistics"):
        fuse_conv_bn(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(UnsupportedModuleError, match="channels"):
        fuse_conv_bn(conv, nn.BatchNorm2d(5))


def test_fp16_and_bf16_models() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).to(dtype).eval()
        x = torch.randn(1, 3, 6, 6, dtype=dtype)
        with torch.no_grad():
            ref = model(x).float()
        tc.fuse(model)
        assert model[0].weight.dtype == dtype
        with torch.no_grad():
            torch.testing.assert_close(model(x).float(), ref, rtol=3e-2, atol=3e-2)


# --- whole models ------------------------------------------------------------------------------


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


def test_resnet_option_a_with_untraceable_shortcut() -> None:
    # PadShortcut has data-dependent control flow: fx treats it as opaque and traces the rest
    model = randomize_bn(tc.models.resnet20(shortcut="A"))
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises
        torch.fx.symbolic_trace(model)
    check_fused(model, torch.randn(2, 3, 32, 32))
    assert n_bn(model) == 0


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


# --- unsafe pairs are not fused ------------------------------------------------------------------


class ResidualBeforeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y + self.bn2(self.conv2(x))  # conv's output is used twice


def test_output_used_elsewhere_is_not_fused() -> None:
    model = randomize_bn(ResidualBeforeBN())
    x = torch.randn(2, 4, 6, 6)
    check_fused(model, x)
    assert isinstance(model.bn, nn.BatchNorm2d)  # kept
    assert isinstance(model.bn2, nn.Identity)  # the safe pair is folded
    with pytest.raises(UnsupportedModuleError, match="used 2 times"):
        tc.fuse(randomize_bn(ResidualBeforeBN()), pairs=[("conv", "bn")])
    with pytest.raises(UnsupportedModuleError, match="'conv'"):
        tc.fuse(randomize_bn(ResidualBeforeBN()), include=["conv"])


def test_output_returned_by_the_model_is_not_fused() -> None:
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y), y

    assert fusion_pairs(Both()) == []
    assert fusion_pairs(Both(), example_inputs=torch.randn(1, 3, 4, 4)) == []


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))  # conv called twice


class FunctionalStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        # a later user needs the BN's statistics
        return y + F.batch_norm(x, self.bn.running_mean, self.bn.running_var)


class SharedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.c1(x)) + self.bn(self.c2(x))


class AliasedModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.alias = self.conv  # the same conv under two names

    def forward(self, x):
        return self.bn(self.conv(x))


class InplaceBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        y.relu_()  # the BN does not see the conv's raw output
        return self.bn(y)


def hide_from_fx(monkeypatch) -> None:
    """Make torch.fx fail on every model, so fuse must follow a recorded forward."""

    def untraceable(model):
        raise RuntimeError("fx disabled by the test")

    monkeypatch.setattr(tc.fusion, "_fx_facts", untraceable)


@pytest.mark.parametrize(
    "cls", [ResidualBeforeBN, SharedConv, FunctionalStats, SharedBN, AliasedModule, InplaceBetween]
)
@pytest.mark.parametrize("traced", [False, True])
def test_unsafe_patterns_are_left_alone(cls, traced, monkeypatch) -> None:
    model = randomize_bn(cls())
    x = torch.randn(2, 4 if cls is ResidualBeforeBN else 3, 5, 5)
    kw = {}
    if traced:
        hide_from_fx(monkeypatch)
        kw = {"example_inputs": x}
        with pytest.raises(ConfigError, match="example_inputs"):
            tc.fuse(randomize_bn(cls()))
    check_fused(model, x, **kw)
    expected = 1 if cls is ResidualBeforeBN else n_bn(cls())  # conv2 -> bn2 is safe there
    assert n_bn(model) == expected
    assert tc.io.history(model)[-1]["config"]["method"] == ("example_inputs" if traced else "fx")


def test_recorded_forward_fuses_the_zoo(monkeypatch) -> None:
    hide_from_fx(monkeypatch)
    model = randomize_bn(tc.models.resnet20(shortcut="B"))
    x = torch.randn(2, 3, 32, 32)
    check_fused(model, x, example_inputs=x)
    assert n_bn(model) == 0


def test_train_mode_bn_stats_are_not_touched_by_analysis() -> None:
    model = randomize_bn(ResidualBeforeBN()).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fusion_pairs(model, example_inputs=torch.randn(2, 4, 6, 6))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# --- models fx cannot trace --------------------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(8)
        self.skip = nn.Conv2d(8, 8, 1)
        self.bn_skip = nn.BatchNorm2d(8)

    def forward(self, x):
        if x.mean() > 100:  # data-dependent control flow: fx cannot trace this forward
            y = self.bn_b(self.conv_b(x))
        else:
            y = self.bn(self.conv(x))
        z = self.skip(y)
        return self.bn_skip(z) + z


def test_untraceable_model_needs_example_inputs_or_pairs() -> None:
    model = randomize_bn(DataDependent())
    with pytest.raises(ConfigError) as info:
        tc.fuse(model)
    msg = str(info.value)
    assert "example_inputs" in msg and "pairs" in msg and "'bn'" in msg
    assert n_bn(model) == 3  # unchanged

    x = torch.randn(2, 3, 6, 6)
    check_fused(model, x, example_inputs=x)
    assert isinstance(model.bn, nn.Identity)
    assert isinstance(model.bn_b, nn.BatchNorm2d)  # not on the path this input took
    assert isinstance(model.bn_skip, nn.BatchNorm2d)  # skip's output is also used by the add
    assert tc.io.history(model)[-1]["config"]["method"] == "example_inputs"


def test_untraceable_model_with_explicit_pairs() -> None:
    model = randomize_bn(DataDependent())
    x = torch.randn(2, 3, 6, 6)
    check_fused(model, x, pairs=[("conv", "bn"), ("conv_b", "bn_b")])
    assert isinstance(model.bn, nn.Identity) and isinstance(model.bn_b, nn.Identity)
    # with example inputs, an explicit pair is still checked against the recorded forward
    with pytest.raises(UnsupportedModuleError, match="used 2 times"):
        tc.fuse(randomize_bn(DataDependent()), pairs=[("skip", "bn_skip")], example_inputs=x)


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


def test_compressed_and_hooked_layers_are_skipped() -> None:
    class WrappedConv(nn.Conv2d):  # a subclass may compute something else
        pass

    model = nn.Sequential(
        WrappedConv(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    randomize_bn(model)
    from torch.nn.utils import prune

    prune.l1_unstructured(model[2], "weight", amount=0.5)  # a hooked, masked conv
    check_fused(model, torch.randn(1, 3, 4, 4))
    assert n_bn(model) == 2
    with pytest.raises(UnsupportedModuleError, match="not a plain"):
        tc.fuse(model, pairs=[("0", "1")])
    with pytest.raises(UnsupportedModuleError, match="hooks"):
        tc.fuse(model, pairs=[("2", "3")])


def test_bn_without_running_stats_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    tc.fuse(model)
    assert isinstance(model[1], nn.BatchNorm2d)


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

    monkeypatch.setattr(tc.fusion, "fuse_conv_bn", flaky)
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


def test_bad_example_inputs_are_a_shape_error(monkeypatch) -> None:
    hide_from_fx(monkeypatch)
    model = randomize_bn(tc.models.resnet20())
    with pytest.raises(ShapeError, match="'conv1'"):
        tc.fuse(model, example_inputs=torch.randn(1, 5, 32, 32))
    assert n_bn(model) == 19 and model.training
