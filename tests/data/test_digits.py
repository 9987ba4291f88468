"""scikit-learn's digits: split, real images, resizing, determinism, arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcompress.data import (
    digits,
    digits_tensors,
)
from torchcompress.errors import ConfigError


def test_digits_default_split_and_shapes():
    train, test = digits()
    assert len(train.dataset) == 1347 and len(test.dataset) == 450
    x, y = next(iter(train))
    assert tuple(x.shape) == (64, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    assert len(test) == 8  # ceil(450 / 64); the test loader keeps its last batch


def test_digits_real_images_and_resizing():
    from sklearn.datasets import load_digits

    raw = load_digits()
    d = digits_tensors(image_size=8, channels=1, normalize=False, test_size=0.25, seed=0)
    # every image is one of sklearn's, scaled from 16 gray levels to [0, 1]
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    levels = torch.unique(d.x_train * 16)
    assert torch.allclose(levels, levels.round()) and len(levels) == 17
    all_imgs = torch.from_numpy(raw.images.astype(np.float32) / 16)
    first = d.x_train[0, 0]
    match = (all_imgs - first).abs().flatten(1).sum(1) == 0
    assert bool(match.any())
    assert int(torch.from_numpy(raw.target)[match][0]) == int(d.y_train[0])

    up = digits_tensors(image_size=32, channels=3, normalize=False)
    assert tuple(up.x_train.shape) == (1347, 3, 32, 32)
    assert torch.equal(up.x_train[:, 0], up.x_train[:, 2])  # channels are copies
    # bilinear upsampling keeps the mean intensity close to the original's
    assert abs(float(up.x_train.mean()) - float(d.x_train.mean())) < 0.01
    small = digits_tensors(image_size=4, channels=2)
    assert tuple(small.x_test.shape) == (450, 2, 4, 4)


def test_digits_stratified_deterministic_and_train_normalised():
    a = digits_tensors(seed=3, image_size=8, channels=1)
    b = digits_tensors(seed=3, image_size=8, channels=1)
    c = digits_tensors(seed=4, image_size=8, channels=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    counts = torch.bincount(a.y_test, minlength=10).double()
    total = counts + torch.bincount(a.y_train, minlength=10).double()
    assert ((counts - total * 450 / 1797).abs() <= 1).all()  # stratified: class shares kept
    # standardised with the TRAIN statistics: exact on train, only approximate on test
    assert abs(float(a.x_train.mean())) < 1e-5 and abs(float(a.x_train.std()) - 1) < 1e-3
    raw = digits_tensors(seed=3, image_size=8, channels=1, normalize=False)
    mean, std = raw.x_train.mean(), raw.x_train.std()
    assert torch.allclose(a.x_test, (raw.x_test - mean) / std, atol=1e-5)


def test_digits_loaders_deterministic_shuffle():
    (t1, _), (t2, _) = digits(batch_size=32, seed=5), digits(batch_size=32, seed=5)
    assert torch.equal(next(iter(t1))[1], next(iter(t2))[1])
    train, _ = digits(batch_size=100, shuffle=False, drop_last=True)
    assert len(train) == 13 and all(len(y) == 100 for _, y in train)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"image_size": 0},
        {"channels": 0},
        {"test_size": 0.0},
        {"test_size": 1.0},
        {"test_size": 0.001},
        {"batch_size": 2.5},
    ],
)
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        digits(**kwargs)
