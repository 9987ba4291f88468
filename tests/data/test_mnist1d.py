"""MNIST-1D, generated offline."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import torchcompress as tc
from torchcompress.errors import ConfigError


def test_mnist1d_default_dataset_offline_and_rng_untouched(monkeypatch):
    pytest.importorskip("mnist1d")
    import requests

    def no_network(*a, **k):
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    random.seed(123)
    np.random.seed(123)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    train, test = tc.data.mnist1d(batch_size=100)
    assert random.random() == expect_py and np.random.rand() == expect_np
    assert len(train.dataset) == 4000 and len(test.dataset) == 1000
    x, y = next(iter(train))
    assert tuple(x.shape) == (100, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs = train.dataset.tensors[0]
    # make_dataset centres the whole set and scales it to unit variance
    all_x = torch.cat([xs, test.dataset.tensors[0]])
    assert abs(float(all_x.mean())) < 1e-4 and abs(float(all_x.std()) - 1) < 1e-3
    assert (
        torch.bincount(torch.cat([train.dataset.tensors[1], test.dataset.tensors[1]])).tolist()
        == [500] * 10
    )


def test_mnist1d_overrides_and_errors():
    pytest.importorskip("mnist1d")
    x, y, xt, _ = tc.data.mnist1d_tensors(num_samples=200, channel_dim=True)
    assert tuple(y.shape) == (160,)
    assert tuple(x.shape) == (160, 1, 40) and tuple(xt.shape) == (40, 1, 40)
    x2, *_ = tc.data.mnist1d_tensors(num_samples=200, channel_dim=True)
    assert torch.equal(x, x2)  # deterministic
    x3, *_ = tc.data.mnist1d_tensors(num_samples=200, channel_dim=True, seed=1)
    assert not torch.equal(x, x3)
    train, _ = tc.data.mnist1d(num_samples=200, seed=1, channel_dim=True)
    assert torch.equal(train.dataset.tensors[0], x3)  # seed= reaches the generator
    with pytest.raises(ConfigError, match="unknown dataset argument 'num_sample'"):
        tc.data.mnist1d(num_sample=10)
    with pytest.raises(ConfigError):
        tc.data.mnist1d(url="http://example.com")
    with pytest.raises(ConfigError):
        tc.data.mnist1d(train_split=1.5)
