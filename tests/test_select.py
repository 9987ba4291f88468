"""torchcompress.select: include/exclude semantics, atomic replacement, snapshots."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from torchcompress.errors import SelectionError, UnsupportedModuleError
from torchcompress.select import (
    get_module,
    matches,
    module_device_dtype,
    read_by_parent,
    replace_modules,
    select_modules,
    set_module,
    snapshot_modules,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.layer2 = nn.ModuleDict({"conv": nn.Conv2d(4, 4, 1), "act": nn.ReLU()})
        self.head = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 2)])
        self.norm = nn.LayerNorm(4)


def names(selection):
    return [n for n, _ in selection]


def test_default_targets_are_linear_and_conv_in_order():
    assert names(select_modules(Net())) == ["stem", "layer1.0", "layer2.conv", "head.0", "head.1"]
    assert names(select_modules(Net(), types=(nn.Linear,))) == ["head.0", "head.1"]


def test_include_takes_descendants_and_globs():
    m = Net()
    assert names(select_modules(m, include=["layer1"])) == ["layer1.0"]
    assert names(select_modules(m, include="head")) == ["head.0", "head.1"]
    assert names(select_modules(m, include=["head.*"])) == ["head.0", "head.1"]
    assert names(select_modules(m, include=["*.conv", "stem"])) == ["stem", "layer2.conv"]
    assert names(select_modules(m, include=["layer?"])) == ["layer1.0", "layer2.conv"]


def test_exclude_removes_descendants():
    m = Net()
    assert names(select_modules(m, exclude=["head"])) == ["stem", "layer1.0", "layer2.conv"]
    assert names(select_modules(m, include=["head"], exclude=["head.1"])) == ["head.0"]
    assert names(select_modules(m, exclude=["layer*", "stem"])) == ["head.0", "head.1"]


def test_matches_helper():
    assert matches("layer1.0.conv1", ["layer1"])
    assert matches("layer1.0.conv1", ["*.conv1"])
    assert not matches("layer10.conv", ["layer1"])
    assert not matches("x", [])


def test_patterns_that_match_nothing_are_errors_with_suggestions():
    m = Net()
    with pytest.raises(
        SelectionError,
        match=r"include pattern 'layr1' matches no module of Net\. Did you mean 'layer1'",
    ):
        select_modules(m, include=["layr1"])
    with pytest.raises(SelectionError, match="exclude pattern 'heads'"):
        select_modules(m, exclude=["heads"])
    with pytest.raises(SelectionError, match="must be a list of glob patterns"):
        select_modules(m, include=[3])  # type: ignore[list-item]
    # a valid pattern whose modules are all unsupported (and not named exactly)
    with pytest.raises(SelectionError, match="selects no layer"):
        select_modules(m, include=["layer1.*"], types=(nn.Linear,))


def test_unsupported_exact_include_names_the_module():
    m = Net()
    with pytest.raises(
        UnsupportedModuleError, match=r"'norm' \(LayerNorm\) was asked for in include="
    ) as e:
        select_modules(m, include=["norm"], family="pruning")
    assert isinstance(e.value, TypeError) and "pruning supports Linear, Conv2d" in str(e.value)
    # the same module reached through a glob is silently left alone
    assert names(select_modules(m, include=["n*", "head.0"])) == ["head.0"]


def test_predicate_and_skip_types():
    m = Net()
    sel = select_modules(m, predicate=lambda n, mod: getattr(mod, "out_features", 0) == 2)
    assert names(sel) == ["head.1"]

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    m.head[0] = Wrapper(nn.Linear(4, 4))
    assert "head.0.inner" in names(select_modules(m))
    assert names(select_modules(m, skip_types=(Wrapper,))) == [
        "stem",
        "layer1.0",
        "layer2.conv",
        "head.1",
    ]
    assert "norm" in names(
        select_modules(m, types=None, predicate=lambda n, mod: not list(mod.children()))
    )


def test_get_and_set_module():
    m = Net()
    assert get_module(m, "") is m and get_module(m, "layer2.conv") is m.layer2["conv"]
    with pytest.raises(SelectionError, match=r"Did you mean .*'layer1\.0'"):
        get_module(m, "layer1.O")
    new = nn.Identity()
    old = set_module(m, "layer1.2", new)
    assert isinstance(old, nn.ReLU) and m.layer1[2] is new
    set_module(m, "layer2.act", new)
    assert m.layer2["act"] is new
    set_module(m, "head.1", nn.Linear(4, 3))
    assert m.head[1].out_features == 3
    with pytest.raises(SelectionError, match="root module"):
        set_module(m, "", new)


def test_replace_modules_keeps_device_dtype_and_mode():
    m = Net().double()
    m.eval()
    m.head[0].train()
    olds = replace_modules(
        m, {"head.0": lambda old: nn.Linear(4, 4), "stem": lambda old: nn.Conv2d(3, 4, 3)}
    )
    assert set(olds) == {"head.0", "stem"}
    assert m.head[0].weight.dtype == torch.float64 and m.stem.weight.dtype == torch.float64
    assert m.head[0].training and not m.stem.training
    assert module_device_dtype(m.head[0]) == (torch.device("cpu"), torch.float64)
    m2 = Net().double()
    replace_modules(m2, {"head.0": lambda old: nn.Linear(4, 4)}, keep_dtype=False)
    assert m2.head[0].weight.dtype == torch.float32
    assert module_device_dtype(nn.ReLU()) == (None, None)


def test_replace_modules_is_atomic():
    m = Net()
    before = {n: mod for n, mod in m.named_modules()}
    state = {k: v.clone() for k, v in m.state_dict().items()}

    def boom(old):
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError, match="factory failed"):
        replace_modules(m, {"head.0": lambda old: nn.Linear(4, 4), "head.1": boom})
    assert {n: mod for n, mod in m.named_modules()} == before
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    with pytest.raises(TypeError, match=r"not an nn\.Module"):
        replace_modules(m, {"head.0": lambda old: "oops"})
    assert m.head[0] is before["head.0"]
    with pytest.raises(SelectionError):
        replace_modules(m, {"nope": lambda old: old})


def test_snapshot_restores_tensors_modules_and_classes():
    m = Net()
    ref = {k: v.clone() for k, v in m.state_dict().items()}
    mods = dict(m.named_modules())
    m.train()

    class Half(nn.Module):
        def forward(self, w):
            return w / 2

    with pytest.raises(RuntimeError, match="boom"), snapshot_modules(m):
        with torch.no_grad():
            m.head[0].weight.mul_(0)
            m.layer1[1].running_mean.add_(5)
        m.head[0].weight = nn.Parameter(torch.ones(4, 4))  # a replaced parameter
        m.stem.weight.data = torch.zeros(1)  # a resized tensor
        parametrize.register_parametrization(m.head[1], "weight", Half())
        m.layer1[0] = nn.Identity()
        m.add_module("extra", nn.Linear(1, 1))
        m.eval()
        raise RuntimeError("boom")
    assert dict(m.named_modules()) == mods
    assert type(m.head[1]) is nn.Linear and not parametrize.is_parametrized(m.head[1])
    for k, v in m.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert all(mod.training for mod in m.modules())
    # a block that succeeds keeps its changes
    with snapshot_modules(m):
        m.layer1[0] = nn.Identity()
    assert isinstance(m.layer1[0], nn.Identity)


class _Scaled(nn.Module):
    """A replacement Linear that visibly differs from the original (doubles its output)."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    @property
    def weight(self) -> torch.Tensor:  # what the fused fast path would read
        return self.lin.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.lin(x)


def test_replacing_an_encoder_layer_child_turns_its_fused_fast_path_off() -> None:
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2
    ).eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        before = enc(x)
    old = set_module(enc, "layers.1.linear2", _Scaled(enc.layers[1].linear2))
    assert enc.layers[1].activation_relu_or_gelu == 0
    assert enc.layers[0].activation_relu_or_gelu == 1  # untouched layers keep their fast path
    assert enc.use_nested_tensor is False
    with torch.no_grad():
        y_nograd = enc(x)
    y_grad = enc(x)  # the slow path (grad enabled) always calls the children
    torch.testing.assert_close(y_nograd, y_grad)
    assert not torch.allclose(y_nograd, before)  # the replacement ran
    # putting the plain module back restores the fast path and the original outputs
    set_module(enc, "layers.1.linear2", old)
    assert enc.layers[1].activation_relu_or_gelu == 1
    assert enc.use_nested_tensor is True
    with torch.no_grad():
        torch.testing.assert_close(enc(x), before)


def test_read_by_parent_names_multihead_attention_children() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.TransformerEncoderLayer(8, 2, 16))
    owned = read_by_parent(model)
    assert set(owned) == {"1.self_attn.out_proj"}
    assert "MultiheadAttention" in owned["1.self_attn.out_proj"]
