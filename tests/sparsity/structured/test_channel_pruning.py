"""tc.prune_channels: ratios, targets, scopes, limits, rounding, protection, reports, iteration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, UnsupportedModuleError
from torchcompress.sparsity import ChannelPruneConfig, channel_report
from torchcompress.sparsity.structured import analyse
from torchcompress.testing import TinyCNN

from .conftest import X
from .models import ConcatNet, ResidualNet, TinyTransformer


def resnet(depth: int = 20) -> nn.Module:
    torch.manual_seed(0)
    return tc.models.resnet.CifarResNet(depth, shortcut="B").eval()


X32 = torch.randn(1, 3, 32, 32)


def test_ratio_removes_that_fraction_of_every_group() -> None:
    m = resnet()
    a = analyse(m, tc.batches.example_batch(m, X32))
    tc.prune_channels(m, X32, 0.5)
    rep = channel_report(m)
    assert [g.units for g in rep.groups] == [len(g.units) for g in a.groups]
    assert all(g.removed == math.floor(0.5 * g.units) for g in rep.groups)
    assert m.layer1[0].conv1.out_channels == 8 and m.layer3[2].conv1.out_channels == 32
    # params and MACs fall like (1 - p)^2 in the convolutions
    assert 0.24 < rep.params_ratio < 0.27 and 0.24 < rep.macs_ratio < 0.27
    assert rep.macs_after == tc.profile(m, X32).total_macs == rep.macs_estimated


@pytest.mark.parametrize(
    ("target", "scope", "round_to"),
    [
        ({"macs": 0.5}, "local", None),
        ({"macs": 0.3}, "global", None),
        ({"params": 0.4}, "local", None),
        ({"params": 0.6}, "global", None),
        ({"macs": 0.5}, "local", 8),
        ({"params": 0.5}, "global", 8),
    ],
)
def test_targets_are_met_within_one_percent(target, scope, round_to) -> None:
    m = resnet()
    tc.prune_channels(m, X32, target=target, scope=scope, round_to=round_to)
    rep = channel_report(m)
    ((metric, goal),) = target.items()
    measured = tc.profile(m, X32)
    got = (
        measured.total_macs / rep.macs_before
        if metric == "macs"
        else (measured.total_params / rep.params_before)
    )
    assert goal - 0.01 <= got <= goal
    assert rep.macs_estimated == rep.macs_after == measured.total_macs
    if round_to:
        for name, mod in m.named_modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels > 3:
                assert mod.out_channels % round_to == 0, name


def test_round_to_keeps_multiples_and_leaves_narrow_groups() -> None:
    m = TinyCNN().eval()  # groups of 8 and 16 channels
    x = torch.randn(1, 3, 8, 8)
    tc.prune_channels(m, x, 0.4, round_to=8)
    assert m.conv1.out_channels == 8  # 8 - 3 rounds back to 8: one step is the whole group
    assert m.conv2.out_channels == 8  # 16 - 6 = 10 -> nearest multiple of 8


def test_global_scope_respects_max_ratio() -> None:
    m = resnet()
    tc.prune_channels(m, X32, 0.6, scope="global", max_ratio=0.7)
    rep = channel_report(m)
    assert all(g.removed <= math.floor(0.7 * g.units) for g in rep.groups)
    assert len({round(g.removed / g.units, 2) for g in rep.groups}) > 1  # not uniform
    total = sum(g.units * g.width for g in rep.groups)
    assert abs(rep.channels_removed - 0.6 * total) <= max(g.width for g in rep.groups)


def test_local_max_ratio_caps_and_ratio_above_it_is_an_error() -> None:
    with pytest.raises(tc.errors.ConfigError, match="above max_ratio"):
        tc.prune_channels(resnet(), X32, 0.95)
    m = resnet()
    tc.prune_channels(m, X32, 0.95, max_ratio=0.95)
    assert m.layer1[0].conv1.out_channels == 1


def test_allocation_never_empties_a_group_and_says_which() -> None:
    m = TinyCNN().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(tc.errors.ConfigError, match="every channel of group 'conv1'"):
        tc.prune_channels(m, x, 1.0, max_ratio=1.0)
    assert m.conv1.out_channels == 8  # left as it was


def test_unreachable_target_names_what_is_reachable() -> None:
    m = TinyCNN().eval()
    x = torch.randn(1, 3, 8, 8)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(tc.errors.ConfigError, match=r"cannot be met.*go down to 0\.\d+x"):
        tc.prune_channels(m, x, target={"macs": 0.01})
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


def test_ignore_protects_outputs_but_inputs_follow() -> None:
    m = ResidualNet().eval()
    x = torch.randn(1, 3, 8, 8)
    tc.prune_channels(m, x, 0.5, ignore=["a1"])
    assert m.a1.out_channels == 12  # protected outputs
    assert m.a1.in_channels == 4  # its inputs followed the stem
    m = ResidualNet().eval()
    tc.prune_channels(m, x, 0.5, ignore="bn")  # a norm passes channels through: kept whole
    assert m.stem.out_channels == m.bn.num_features == 8


def test_ignore_a_block_keeps_it_whole() -> None:
    m = TinyTransformer().eval()
    x = torch.randint(0, 20, (1, 4))
    tc.prune_channels(m, x, 0.5, ignore=["blocks.0"])
    b0 = m.blocks[0]
    assert b0["attn"].qkv.weight.shape == (48, 16) and b0["fc1"].weight.shape == (32, 16)
    assert m.blocks[1]["fc1"].out_features == 16  # the other block prunes
    assert m.emb.embedding_dim == 16  # the residual stream enters the protected block


def test_report_and_history() -> None:
    m = ConcatNet().eval()
    x = torch.randn(1, 3, 8, 8)
    tc.prune_channels(m, x, 0.5)
    rep = channel_report(m)
    text = str(rep)
    assert "c1" in text and "groups pruned" in text
    d = rep.to_dict()
    assert d["groups"][0]["removed"] == 3 and d["macs_ratio"] == rep.macs_ratio
    hist = tc.io.history(m)[-1]
    assert hist["step"] == "prune_channels" and hist["config"]["ratio"] == 0.5
    assert hist["cumulative"]["macs"] == pytest.approx(rep.macs_ratio)
    with pytest.raises(tc.errors.CompressionStateError, match="no channel-pruning report"):
        channel_report(TinyCNN())


def test_config_object_and_keywords() -> None:
    cfg = ChannelPruneConfig(ratio=0.25, criterion="l1", ignore="fc")
    assert cfg.ignore == ("fc",)
    assert ChannelPruneConfig.from_dict(cfg.to_dict()) == cfg
    m = TinyCNN().eval()
    x = torch.randn(1, 3, 8, 8)
    tc.prune_channels(m, x, cfg)
    assert m.conv2.out_channels == 12
    m = TinyCNN().eval()
    tc.prune_channels(m, x, config=cfg, ratio=0.5)  # keywords override the config
    assert m.conv2.out_channels == 8 and channel_report(m).criterion == "l1"
    m = TinyCNN().eval()
    tc.prune_channels(m, x, config=cfg, target={"params": 0.5})
    assert channel_report(m).params_ratio <= 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of ratio"),
        ({"ratio": 0.5, "target": {"macs": 0.5}}, "exactly one of ratio"),
        ({"ratio": 1.5}, "ratio=1.5 is outside"),
        ({"target": {"flops": 0.5}}, "'flops' is not one of"),
        ({"target": {"macs": 0.5, "params": 0.5}}, "one budget"),
        ({"target": {"macs": 0.0}}, "outside"),
        ({"ratio": 0.5, "criterion": "l3"}, "Did you mean"),
        ({"ratio": 0.5, "scope": "layer"}, "scope='layer'"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "max_ratio": 0}, "max_ratio"),
    ],
)
def test_bad_config(kwargs, match) -> None:
    with pytest.raises(tc.errors.ConfigError, match=match):
        ChannelPruneConfig(**kwargs)


def test_iterative_schedule_with_finetune_and_profile() -> None:
    torch.manual_seed(0)
    m = TinyCNN()
    x = torch.randn(8, 3, 8, 8)
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))) for _ in range(3)]
    macs0 = tc.profile(m, x).total_macs
    for goal in (0.8, 0.6, 0.45):  # a schedule of targets, each of the original model
        tc.prune_channels(m, x, target={"macs": goal}, criterion="taylor", data=data)
        tc.finetune(m, data, epochs=1, lr=0.01, progress=False)
        macs = tc.profile(m, x).total_macs
        assert goal - 0.05 <= macs / macs0 <= goal
        assert channel_report(m).cumulative["macs"] == pytest.approx(macs / macs0)
    prof = tc.profile(m, x)
    conv1 = next(r for r in prof if r.name == "conv1")
    assert conv1.params == m.conv1.weight.numel()  # the profile shows the new shapes
    # a target already met is said, not silently ignored
    tc.prune_channels(m, x, target={"macs": 0.9})
    assert "already met" in channel_report(m).note
    tc.prune_channels(m, x, target={"macs": 0.9}, relative_to="current")
    assert channel_report(m).macs_ratio <= 0.9


def test_training_mode_dtype_and_grad_flags_kept() -> None:
    m = TinyCNN().double().train()
    m.conv1.weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    tc.prune_channels(m, x, 0.5)
    assert m.training and m.bn1.training
    assert m.conv1.weight.dtype == torch.float64 and not m.conv1.weight.requires_grad
    assert m.conv2.weight.requires_grad
    m(x).sum().backward()


def test_fine_tune_the_pruned_model_against_its_dense_teacher() -> None:
    torch.manual_seed(0)
    dense = TinyCNN().eval()
    student = copy.deepcopy(dense)
    x = torch.randn(4, 3, 8, 8)
    tc.prune_channels(student, x, target={"params": 0.5})
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    before = student(x).detach()

    def mse(s, t, _target):  # a plain logit-matching loss until tc.distill lands
        return torch.nn.functional.mse_loss(s, t)

    tc.finetune(student, data, epochs=1, lr=0.01, teacher=dense, distill_loss=mse, progress=False)
    assert student(x).shape == dense(x).shape and not torch.equal(student(x), before)


@pytest.mark.gpu
def test_cuda_model_pruned_on_its_device() -> None:
    torch.manual_seed(0)
    m = ConcatNet().cuda().eval()
    x = torch.randn(2, 3, 8, 8, device="cuda")
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    tc.prune_channels(m, x, target={"macs": 0.5}, criterion="taylor", data=data)
    assert all(p.is_cuda for p in m.parameters())
    assert m(x).shape == (2, 3)


def test_taylor_needs_data() -> None:
    with pytest.raises(ConfigError, match="needs data="):
        tc.prune_channels(TinyCNN().eval(), X, 0.5, criterion="taylor")


def test_nothing_to_prune_is_said() -> None:
    m = nn.Linear(4, 2)  # its outputs are the model's
    with pytest.raises(UnsupportedModuleError, match="No channel of Linear can be removed"):
        tc.prune_channels(m, torch.randn(1, 4), 0.5)
    tc.prune_channels(m, torch.randn(1, 4), 0.0)  # nothing asked: fine
    assert m.out_features == 2


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        tc.prune_channels(lambda x: x, X, 0.5)  # type: ignore[arg-type]


def test_under_inference_mode_the_pruned_model_stays_trainable() -> None:
    torch.manual_seed(0)
    m = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        tc.prune_channels(m, x, 0.5)
    assert all(not p.is_inference() and p.requires_grad for p in m.parameters())
    assert m.conv1.out_channels == 4 and m.fc.in_features == 8
    m.train()
    m(x).sum().backward()
    assert m.conv1.weight.grad.shape == (4, 3, 3, 3)
    data = [(x, torch.randint(0, 4, (2,)))]
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        tc.prune_channels(TinyCNN().eval(), x, 0.5, criterion="taylor", data=data)
