"""tc.seed_everything and the loops following the model's device."""

from __future__ import annotations

import copy

import pytest
import torch

import torchcompress as tc
from torchcompress.errors import ConfigError

from .conftest import mlp, tiny_data


def test_seed_everything_repeats_every_generator():
    import random

    import numpy as np

    assert tc.seed_everything(7) == 7
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    tc.seed_everything(7)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(ConfigError):
        tc.seed_everything(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_the_model_and_matches_cpu():
    model = mlp().cuda()
    tc.finetune(model, tiny_data(), progress=False)  # CPU batches go to the model's device
    assert next(model.parameters()).is_cuda
    on_gpu = tc.evaluate(model, tiny_data())
    on_cpu = tc.evaluate(copy.deepcopy(model).cpu(), tiny_data())
    assert on_gpu["accuracy"] == on_cpu["accuracy"]
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-4)
    m = mlp()
    tc.evaluate(m, tiny_data(), device="cuda")  # device= moves the model
    assert next(m.parameters()).is_cuda
