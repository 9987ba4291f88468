"""The one hook loop: modes, flags and hooks restored, gradients of the effective weight, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from torchcompress.batches import Batch
from torchcompress.calibration import LayerStats, collect, run_batches, split_batch
from torchcompress.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    NumericalError,
    UnsupportedModuleError,
)


class Probe(nn.Module):
    """Records whether autograd was on and the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((torch.is_grad_enabled(), self.training))
        return x


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), Probe(), nn.ReLU(), nn.Linear(6, 3))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_modes_flags_and_hooks_are_restored_and_no_grad_without_gradients() -> None:
    model = _mlp().train()
    model[4].weight.requires_grad_(False)
    data = [torch.randn(5, 4) for _ in range(3)]
    stats = collect(model, data, {"0": ["input_sq"], "4": ["xtx"]})
    assert stats.batches == 3 and stats["0"].calls == 3 and stats["0"].rows == 15
    assert model[2].seen == [(False, False)] * 3  # eval mode, under no_grad
    assert all(m.training for m in model.modules()) and _hooks(model) == 0
    assert not model[4].weight.requires_grad and model[0].weight.requires_grad
    # with gradients: autograd on, still eval mode; flags and .grad untouched
    model[2].seen.clear()
    collect(
        model,
        [(x, torch.randint(0, 3, (5,))) for x in data],
        {"0": ["grad_abs"], "4": ["grad_abs"]},
        loss_fn=lambda out, y: F.cross_entropy(out, y),
    )
    assert model[2].seen == [(True, False)] * 3
    assert not model[4].weight.requires_grad and model[4].weight.grad is None
    assert model[0].weight.grad is None and _hooks(model) == 0
    assert all(m.training for m in model.modules())


def test_everything_is_restored_when_a_batch_fails() -> None:
    model = _mlp().train()
    data = [torch.randn(5, 4), torch.randn(5, 7)]
    with pytest.raises(DataError, match="Batch 1 of calib_data does not fit"):
        collect(model, data, {"0": ["input_sq"]})
    with pytest.raises(DataError, match="Batch 1 of calib_data does not fit"):
        collect(
            model,
            [(x, torch.zeros(5, dtype=torch.long)) for x in data],
            {"0": ["grad_sq"]},
            loss_fn=lambda out, y: F.cross_entropy(out, y),
        )
    assert _hooks(model) == 0 and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


class Keep(nn.Module):
    """A parametrization that keeps a fixed set of weights (like a pruning mask)."""

    def __init__(self, keep: Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.keep


def test_gradients_are_taken_with_respect_to_the_effective_weight() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False)
    keep = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    parametrize.register_parametrization(lin, "weight", Keep(keep))
    model = nn.Sequential(lin)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(2)]
    stats = collect(
        model, data, {"0": ["grad_abs", "grad_sq"]}, loss_fn=lambda o, y: F.cross_entropy(o, y)
    )["0"]
    w_eff = (lin.parametrizations.weight.original * keep).detach()
    abs_sum, sq_sum, samples = torch.zeros(2, 3), torch.zeros(2, 3), 0
    for x, y in data:
        w = w_eff.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(x @ w.t(), y), w)
        abs_sum += g.abs()
        for i in range(4):
            w = w_eff.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(x[i : i + 1] @ w.t(), y[i : i + 1]), w)
            sq_sum += g**2
            samples += 1
    torch.testing.assert_close(stats["grad_abs"], abs_sum / 2)
    torch.testing.assert_close(stats["grad_sq"], sq_sum / samples)
    assert stats.count("grad_abs") == 2 and stats.count("grad_sq") == 8
    assert bool((stats["grad_abs"] * (1 - keep) != 0).any())  # masked weights get a gradient too
    assert lin.parametrizations.weight.original.grad is None
    assert lin.parametrizations.weight.original.requires_grad
    lin.parametrizations.weight.original.requires_grad_(False)  # frozen: restored as frozen
    collect(model, data, {"0": ["grad_abs", "grad_sq"]}, loss_fn=lambda o, y: F.cross_entropy(o, y))
    assert not lin.parametrizations.weight.original.requires_grad


def test_hf_conv1d_gradients_are_canonical() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    c = Conv1D(4, 3)  # weight stored (3, 4)
    x = torch.randn(2, 5, 3)
    stats = collect(
        nn.Sequential(c), [x], {"0": ["grad_abs"]}, loss_fn=lambda out, _: out.pow(2).sum()
    )["0"]
    w = c.weight.detach().t().clone().requires_grad_(True)
    (g,) = torch.autograd.grad((x @ w.t() + c.bias.detach()).pow(2).sum(), w)
    torch.testing.assert_close(stats["grad_abs"], g.abs())


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(2, 2)
        self.unused = nn.Linear(2, 2)
        self.also_unused = nn.Conv1d(2, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def test_every_unreached_layer_is_named() -> None:
    model = Branchy()
    req = {"used": ["input_sq"], "unused": ["input_sq"], "also_unused": []}
    with pytest.raises(CalibrationError, match=r"2 layers: 'unused', 'also_unused' were never run"):
        collect(model, torch.randn(3, 2), req)
    stats = collect(model, torch.randn(3, 2), req, require_all=False)
    assert stats["unused"].calls == 0 and "input_sq" not in stats["unused"]
    assert stats["unused"].count("input_sq") == 0
    with pytest.raises(CalibrationError, match="No 'input_sq' statistic"):
        stats["unused"]["input_sq"]


def test_nan_statistics_name_every_layer() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(NumericalError, match=r"'1', '2' hold NaN or Inf"):
        collect(model, torch.randn(3, 2), {"0": ["xtx"], "1": ["input_sq"], "2": ["input_sq"]})


def test_bad_requests_are_clear_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with pytest.raises(ConfigError, match="gradient statistics need loss_fn"):
        collect(model, torch.randn(3, 2), {"0": ["grad_abs"]})
    with pytest.raises(ConfigError, match=r"Unknown calibration statistic 'inptu_sq'.*'input_sq'"):
        collect(model, torch.randn(3, 2), {"0": ["inptu_sq"]})
    with pytest.raises(ConfigError, match="no layer 'fc'"):
        collect(model, torch.randn(3, 2), {"fc": ["input_sq"]})
    with pytest.raises(ConfigError, match="list of statistic names"):
        collect(model, torch.randn(3, 2), {"0": "input_sq"})
    with pytest.raises(UnsupportedModuleError, match=r"'1' \(LayerNorm\)"):
        collect(model, torch.randn(3, 2), {"1": ["input_sq"]})
    with pytest.raises(DataError, match="no batch"):
        collect(model, [], {"0": ["input_sq"]})


def test_losses_that_give_no_gradient_are_clear_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    data = [(torch.randn(3, 2), torch.zeros(3))]
    with pytest.raises(CalibrationError, match="scalar tensor; batch 0 gave Tensor of shape"):
        collect(model, data, {"0": ["grad_abs"]}, loss_fn=lambda out, y: out)
    with pytest.raises(CalibrationError, match="does not depend on the targeted layers"):
        collect(model, data, {"0": ["grad_abs"]}, loss_fn=lambda out, y: torch.tensor(1.0))


def test_run_batches_is_the_data_loop() -> None:
    model = _mlp().train()
    seen = []
    n = run_batches(
        model,
        [torch.randn(2, 4) for _ in range(5)],
        step=lambda b, i: seen.append((i, torch.is_grad_enabled(), model.training)),
        grad=True,
        max_batches=3,
    )
    assert n == 3 and seen == [(0, True, False), (1, True, False), (2, True, False)]
    assert model.training
    assert run_batches(model, torch.randn(2, 4)) == 1 and model[2].seen[-1] == (False, False)


def test_results_keep_the_geometry_and_the_request_order() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 9, 2))
    stats = collect(model, torch.randn(2, 2, 5, 5), {"2": [], "0": ["xtx"]})
    assert list(stats) == ["2", "0"] and isinstance(stats["0"], LayerStats)
    assert stats["0"].geometry.groups == 2 and stats["0"]["xtx"].shape == (2, 9, 9)
    assert stats["2"].rows == 2 and stats["0"].rows == 2 * 9 and not stats["2"].values


def test_split_batch_cuts_every_batched_tensor() -> None:
    b = Batch(args=(torch.randn(3, 2),), kwargs={"m": torch.ones(3, 4), "k": 1}, target=None)
    parts = split_batch(b)
    assert [p.args[0].shape[0] for p in parts] == [1, 1, 1] and parts[0].kwargs["k"] == 1


@pytest.mark.parametrize("name", ["", ".engine", ".statistics", ".sequential", ".distributed"])
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module("torchcompress.calibration" + name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
