"""Masks: exact zeros in every forward, through training, copies, state dicts and compile."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.sparsity.masking import Mask, apply_mask, bake_masks, get_mask, original


def _zeros_where_masked(model: nn.Module) -> bool:
    for m in model.modules():
        mask = get_mask(m)
        if mask is not None and not bool((m.weight[~mask] == 0).all()):
            return False
    return True


@pytest.mark.parametrize(
    "opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.5),
        lambda p: torch.optim.RMSprop(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    ],
)
def test_zeros_survive_training(mlp: nn.Module, mlp_data: list, opt) -> None:
    # momentum built up *before* pruning, so the optimizer has state for the weights that get pruned
    o = opt(mlp.parameters())
    for x, y in mlp_data:
        o.zero_grad()
        nn.functional.cross_entropy(mlp(x), y).backward()
        o.step()
    tc.prune(mlp, tc.PruneConfig(sparsity=0.6))
    zeros_before = {
        n: int((m.weight == 0).sum()) for n, m in mlp.named_modules() if get_mask(m) is not None
    }
    for _ in range(5):
        for x, y in mlp_data:
            o.zero_grad()
            nn.functional.cross_entropy(mlp(x), y).backward()
            o.step()
            assert _zeros_where_masked(mlp)
    zeros_after = {
        n: int((m.weight == 0).sum()) for n, m in mlp.named_modules() if get_mask(m) is not None
    }
    assert all(zeros_after[n] >= zeros_before[n] for n in zeros_before)
    # the optimizer kept the same parameter objects
    assert {id(p) for g in o.param_groups for p in g["params"]} == {id(p) for p in mlp.parameters()}


def test_masked_entries_get_no_gradient(mlp: nn.Module, mlp_data: list) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    x, y = mlp_data[0]
    nn.functional.cross_entropy(mlp(x), y).backward()
    lin = mlp[0]
    assert bool((original(lin).grad[~get_mask(lin)] == 0).all())


def test_state_dict_deepcopy_and_to(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.7))
    keys = list(mlp.state_dict())
    assert "0.parametrizations.weight.0.mask" in keys
    assert mlp.state_dict()["0.parametrizations.weight.0.mask"].dtype == torch.bool
    twin = copy.deepcopy(mlp)
    x = torch.randn(3, 16)
    assert torch.equal(twin(x), mlp(x))
    assert get_mask(twin[0]) is not get_mask(mlp[0])
    fresh = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)
    )
    tc.prune(fresh, tc.PruneConfig(sparsity=0.1))
    fresh.load_state_dict(mlp.state_dict())
    assert torch.equal(fresh(x), mlp(x))
    d = mlp.to(torch.float64)
    assert d[0].weight.dtype == torch.float64 and get_mask(d[0]).dtype == torch.bool
    assert _zeros_where_masked(d)


def test_torch_compile_sees_masks(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 16)
    torch.testing.assert_close(compiled(x), mlp(x))
    # a new mask after compilation is honoured (the mask is an input, not a baked constant)
    with torch.no_grad():
        get_mask(mlp[0]).zero_()
    torch.testing.assert_close(compiled(x), mlp(x))


def test_assigning_weight_keeps_mask() -> None:
    lin = nn.Linear(4, 2)
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    apply_mask(lin, "weight", mask)
    lin.weight = torch.ones(2, 4)
    assert torch.equal(lin.weight, mask.float())


def test_mask_nan_safe() -> None:
    m = Mask(torch.tensor([True, False]))
    out = m(torch.tensor([1.0, float("nan")]))
    assert out.tolist() == [1.0, 0.0]


def test_bake_keeps_parameter_identity() -> None:
    lin = nn.Linear(4, 2)
    p = lin.weight
    apply_mask(lin, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    bake_masks(lin)
    assert type(lin) is nn.Linear and lin.weight is p
    assert int((lin.weight == 0).sum()) == 4


def test_mask_shape_checked() -> None:
    from torchcompress.errors import CompressionStateError

    with pytest.raises(CompressionStateError, match="does not fit"):
        apply_mask(nn.Linear(4, 2), "weight", torch.ones(3, 3, dtype=torch.bool))


def test_bake_keeps_autograd_accumulator() -> None:
    lin = nn.Linear(4, 2)
    acc = lin.weight.view_as(lin.weight).grad_fn.next_functions[0][0]
    apply_mask(lin, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    assert original(lin).view_as(original(lin)).grad_fn.next_functions[0][0] is acc
    bake_masks(lin)
    assert lin.weight.view_as(lin.weight).grad_fn.next_functions[0][0] is acc  # DDP's hooks stay
