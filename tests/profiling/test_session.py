"""profiling.session: tc.profile on whole models: totals, bytes, registered costs, inputs, state,
errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.costs import LayerCost, register_cost
from torchcompress.errors import ConfigError, SelectionError, ShapeError

from .conftest import Fn


def _resnet20_convs(shortcut_b: bool) -> int:
    conv1 = 3 * 16 * 9 * 32 * 32
    stage1 = 6 * 16 * 16 * 9 * 32 * 32
    stage2 = 16 * 32 * 9 * 16 * 16 + 5 * 32 * 32 * 9 * 16 * 16
    stage3 = 32 * 64 * 9 * 8 * 8 + 5 * 64 * 64 * 9 * 8 * 8
    shortcuts = (16 * 32 * 16 * 16 + 32 * 64 * 8 * 8) if shortcut_b else 0
    return conv1 + stage1 + stage2 + stage3 + shortcuts


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_total_is_analytic(shortcut) -> None:
    model = tc.models.resnet20(shortcut=shortcut)
    p = tc.profile(model, torch.randn(1, 3, 32, 32))
    expected = _resnet20_convs(shortcut == "B") + 64 * 10
    assert p.total_macs == expected
    if shortcut == "A":
        assert expected == 40_551_040  # the familiar 40.55M MACs
    assert p.total_params == sum(t.numel() for t in model.parameters())
    assert p.total_flops == 2 * expected
    assert p.by_type()["Conv2d"]["count"] == (19 if shortcut == "A" else 21)
    # batch size scales the MACs, not the params
    p4 = tc.profile(model, torch.randn(4, 3, 32, 32))
    assert p4.total_macs == 4 * expected and p4.total_params == p.total_params


def test_include_exclude_filter_rows_not_totals() -> None:
    model = tc.models.resnet20()
    x = torch.randn(1, 3, 32, 32)
    full = tc.profile(model, x)
    part = tc.profile(model, x, include=["layer1"], exclude=["*.bn*"])
    assert part.rows and all(r.name.startswith("layer1.") and ".bn" not in r.name for r in part)
    assert part.total_macs == full.total_macs
    with pytest.raises(SelectionError, match="layer9"):
        tc.profile(model, x, include=["layer9"])
    with pytest.raises(ConfigError):
        tc.profile(model, x, depth=-1)


def test_shared_module_counts_every_call() -> None:
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    p = tc.profile(Twice(), torch.randn(3, 4))
    assert p["lin"].macs == 2 * 3 * 16 and p["lin"].calls == 2
    assert p.total_params == 20


def test_bytes_follow_dtype_and_int8_buffers() -> None:
    m32 = nn.Linear(100, 50)
    p32 = tc.profile(m32, torch.randn(2, 100))
    assert p32.total_bytes == (100 * 50 + 50) * 4
    m16 = nn.Linear(100, 50).half()
    p16 = tc.profile(m16, torch.randn(2, 100))  # input cast to the model's dtype
    assert p16.total_bytes == (100 * 50 + 50) * 2
    assert p16.total_macs == p32.total_macs

    class Int8Store(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(50, 100, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(50))
            self.register_buffer("scratch", torch.zeros(1000), persistent=False)

        def forward(self, x):
            return x @ (self.qweight.float() * self.scale[:, None]).t()

    p8 = tc.profile(Int8Store(), torch.randn(2, 100))
    assert p8.total_bytes == 50 * 100 * 1 + 50 * 4  # non-persistent buffers are not stored
    assert p8.total_params == 0
    assert p8.total_macs == 2 * 100 * 50


def test_tied_weights_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = Tied()
    p = tc.profile(model, torch.randint(0, 100, (2, 5)))
    assert p.total_params == 1600
    assert p.total_bytes == 1600 * 4
    assert p.total_macs == 2 * 5 * 16 * 100
    assert len(model.state_dict()) == 2  # (both keys are there; the bytes are counted once)


def test_unknown_layer_with_weights_is_flagged() -> None:
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return torch.cdist(x, self.w)  # no formula for cdist

    p = tc.profile(Opaque(), torch.randn(3, 4))
    assert p.total_macs == 0
    assert "no cost formula" in p[""].note


class FakeQuantLinear(nn.Module):
    """Stands in for a family's compressed layer: int8 weights in a buffer, a dense inner matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.ones(6, 4, dtype=torch.int8))
        self.inner = nn.Linear(4, 6)

    def forward(self, x):
        return self.inner(x) + F.linear(x, self.qweight.float())


@register_cost(FakeQuantLinear)
def _fake_cost(module, args, kwargs, out) -> LayerCost:
    return LayerCost(macs=args[0].numel() * 6, params=24, note="int8 kernel")


def test_registered_cost_counts_children_once() -> None:
    model = nn.Sequential(FakeQuantLinear(), nn.ReLU())
    p = tc.profile(model, torch.randn(2, 4))
    assert p.total_macs == 2 * 4 * 6  # not inner Linear + F.linear + own cost
    assert [r.name for r in p] == ["0"]
    row = p["0"]
    assert row.params == 24 and row.note == "int8 kernel"
    assert row.bytes == 24 * 1 + (24 + 6) * 4  # its whole subtree's state


class OwnWorkOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(4, 4)

    def forward(self, x):
        return self.child(x) @ torch.ones(4, 4)


@register_cost(OwnWorkOnly)
def _own_cost(module, args, kwargs, out) -> LayerCost:
    return LayerCost(macs=1000, counts_children=False)


def test_registered_cost_without_children() -> None:
    p = tc.profile(OwnWorkOnly(), torch.randn(2, 4))
    assert p["child"].macs == 2 * 16  # the child is counted on its own
    assert p[""].macs == 1000  # its own matmul is in its cost, not counted again
    assert p.total_macs == 1032


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(5, 2)

    def forward(self, x, y=None):
        return self.a(x) + (self.b(y) if y is not None else 0)


def test_example_input_forms() -> None:
    m = TwoInputs()
    x, y = torch.randn(4, 3), torch.randn(4, 5)
    full = 4 * 3 * 2 + 4 * 5 * 2
    assert tc.profile(m, (x, y)).total_macs == full
    assert tc.profile(m, {"x": x, "y": y}).total_macs == full
    assert tc.profile(m, Batch(args=(x,), kwargs={"y": y})).total_macs == full
    assert tc.profile(m, x).total_macs == 4 * 3 * 2
    assert tc.profile(m, [x, torch.zeros(4)]).total_macs == 4 * 3 * 2  # a DataLoader batch


def _state(model: nn.Module):
    return {
        name: (
            m.training,
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            sorted(vars(m)),
            {k: v.clone() for k, v in m.state_dict().items()},
        )
        for name, m in model.named_modules()
    }


def test_leaves_no_state() -> None:
    model = tc.models.resnet20()
    model.train()
    model.layer1.eval()  # a mixed-mode model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    before = _state(model)
    x = torch.randn(2, 3, 32, 32)
    tc.profile(model, x)
    after = _state(model)
    assert before.keys() == after.keys()
    for name in before:
        b, a = before[name], after[name]
        assert b[:4] == a[:4], name
        assert b[4].keys() == a[4].keys()
        for k in b[4]:
            torch.testing.assert_close(a[4][k], b[4][k], rtol=0, atol=0)
    # the forward ran in eval mode: BN running statistics unchanged (checked above), and grads off
    assert all(p.grad is None for p in model.parameters())


def test_wrong_shape_is_shape_error_naming_the_module() -> None:
    model = tc.models.resnet20()
    with pytest.raises(ShapeError) as info:
        tc.profile(model, torch.randn(1, 4, 32, 32))
    msg = str(info.value)
    assert "'conv1'" in msg and "(1, 4, 32, 32)" in msg

    seq = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ShapeError) as info:
        tc.profile(seq, torch.randn(3, 8))
    assert "'2'" in str(info.value) and "(3, 4)" in str(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in seq.modules())
    assert seq.training


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_the_model_to_cuda() -> None:
    model = tc.models.resnet20().cuda()
    p = tc.profile(model, torch.randn(1, 3, 32, 32))  # a CPU input is moved to the model
    assert p.total_macs == 40_551_040
    q = torch.randn(1, 4, 16, 8, device="cuda", dtype=torch.float16)
    sdpa = tc.profile(Fn(lambda a: F.scaled_dot_product_attention(a, a, a, is_causal=True)), q)
    assert sdpa.total_macs == 4 * 16 * 16 * 16


@pytest.mark.hf
def test_minilm_matches_the_analytic_count() -> None:
    pytest.importorskip("transformers")
    hf = pytest.importorskip("torchcompress.models.hf")
    try:
        model, tok = hf.load_minilm()
    except tc.errors.DependencyError as e:
        pytest.skip(str(e))
    sentences = tc.data.english_sentences(4, seed=0)
    batch = dict(tok(sentences, padding=True, return_tensors="pt"))
    n, L = batch["input_ids"].shape
    d, ff, layers = 384, 1536, 6
    linear = layers * n * L * (4 * d * d + 2 * d * ff) + n * d * d  # + pooler
    attention = layers * 2 * n * L * L * d
    p = tc.profile(model, batch)
    assert p.total_macs == linear + attention
    assert p.total_params == sum(t.numel() for t in model.parameters())


def test_uncalled_layer_is_noted_and_counted_in_params() -> None:
    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 100)

        def forward(self, x):
            return self.used(x)

    p = tc.profile(Spare(), torch.randn(1, 4))
    assert p["spare"].note == "not called" and p["spare"].macs == 0
    assert p.total_params == 20 + 500
