"""The distill= protocol of tc.finetune: any object with attach/parameters/loss/detach."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.errors import ConfigError, DataError
from torchcompress.train import Distillation, LambdaCallback
from torchcompress.train.distillation import check_distillation, peek_first

from .conftest import mlp, tiny_data


class Affine:
    """A distillation object with a learned part: MSE between scale * student and the teacher."""

    def __init__(self) -> None:
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[str] = []

    def attach(self, student, teacher, example):
        self.calls.append("attach")
        self.teacher = teacher
        assert isinstance(example, Batch)
        self.example = example

    def parameters(self):
        return [self.scale]

    def loss(self, student_output, batch):
        with torch.no_grad():
            t = self.teacher(*batch.args)
        loss = F.mse_loss(self.scale * student_output, t)
        return loss, {"mse": loss.detach(), "scale": self.scale.detach()}

    def detach(self):
        self.calls.append("detach")


def test_protocol_object_is_attached_trained_and_detached():
    d = Affine()
    assert isinstance(d, Distillation)
    data = tiny_data()
    seen = []
    model = tc.finetune(
        mlp(),
        data,
        teacher=mlp(seed=1),
        distill=d,
        lr=0.1,
        progress=False,
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(dict(s.losses)))],
    )
    assert d.calls == ["attach", "detach"]
    assert torch.equal(d.example.args[0], data[0][0])  # the first batch, on the device
    assert d.scale.item() != 1.0  # the optimizer trained the learned part
    assert sorted(seen[0]) == ["distill", "distill.mse", "distill.scale"]
    assert seen[0]["distill"] == pytest.approx(seen[0]["distill.mse"])
    assert tc.train.training_history(model)[-1]["step"] == len(data)
    assert tc.io.history(model)[-1]["config"]["distill"] == "Affine"


def test_a_ready_optimizer_gets_the_learned_parts_and_detach_runs_on_failure():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    d = Affine()
    tc.finetune(model, tiny_data(), teacher=mlp(1), distill=d, optimizer=opt, progress=False)
    assert any(p is d.scale for g in opt.param_groups for p in g["params"])
    assert d.scale.item() != 1.0

    class Bad(Affine):
        def loss(self, student_output, batch):
            return torch.tensor(float("nan")), {}

    bad = Bad()
    with pytest.raises(tc.errors.NumericalError):
        tc.finetune(mlp(), tiny_data(), teacher=mlp(1), distill=bad, progress=False)
    assert bad.calls == ["attach", "detach"]

    class NotAPair(Affine):
        def loss(self, student_output, batch):
            return torch.zeros(())

    with pytest.raises(ConfigError, match=r"must return \(loss, components\)"):
        tc.finetune(mlp(), tiny_data(), teacher=mlp(1), distill=NotAPair(), progress=False)


def test_check_distillation_names_what_is_missing():
    check_distillation(Affine())
    with pytest.raises(
        ConfigError, match=r"without attach, parameters, loss, detach.*Distiller\(\['kd'\]\)"
    ):
        check_distillation(["kd"])
    with pytest.raises(ConfigError, match="without detach"):

        class NoDetach:
            def attach(self, s, t, e): ...
            def parameters(self): ...
            def loss(self, o, b): ...

        check_distillation(NoDetach())


def test_peek_keeps_a_shuffled_loaders_order_and_a_one_shot_iterators_first_batch():
    ds = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))

    def order(loader, peek: bool) -> list[int]:
        torch.manual_seed(5)
        if peek:
            first, loader = peek_first(loader)
            assert isinstance(first, list) and len(first) == 2
        return [int(y) for _, ys in itertools.chain(loader, loader) for y in ys]

    for gen in (None, torch.Generator().manual_seed(1)):
        plain = DataLoader(ds, batch_size=4, shuffle=True, generator=gen)
        base = order(plain, False)
        if gen is not None:
            gen.manual_seed(1)
        again = DataLoader(ds, batch_size=4, shuffle=True, generator=gen)
        assert order(again, True) == base
    it = iter([(torch.zeros(2, 2), torch.zeros(2)), (torch.ones(2, 2), torch.ones(2))])
    first, rest = peek_first(it)
    assert torch.equal(first[0], torch.zeros(2, 2)) and len(list(rest)) == 2
    with pytest.raises(DataError, match="no batch"):
        peek_first(iter([]))
    x = torch.zeros(3, 2)
    assert peek_first(x) == (x, x)
