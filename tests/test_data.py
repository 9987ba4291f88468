"""tc.data: digits, the CIFAR-10 reader (both on-disk layouts), MNIST-1D, English sentences."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

import torchcompress as tc
from torchcompress.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar10,
    digits,
    digits_tensors,
    english_sentences,
)
from torchcompress.errors import ConfigError, DataError, DatasetNotFoundError

# --- digits ----------------------------------------------------------------------------------


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


# --- CIFAR-10 --------------------------------------------------------------------------------


def _synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def _write_bin(folder, n=6):
    os.makedirs(folder, exist_ok=True)
    out = {}
    for i, name in enumerate([*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]):
        data, labels = _synthetic_split(n, i)
        rec = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        rec.tofile(os.path.join(folder, name))
        out[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
        f.write("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return out


def _write_py(folder, n=6, protocol=2, str_keys=False):
    os.makedirs(folder, exist_ok=True)
    out = {}
    for i, name in enumerate([*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]):
        data, labels = _synthetic_split(n, 10 + i)
        d = {
            b"batch_label": b"synthetic",
            b"labels": [int(v) for v in labels],
            b"data": data,
            b"filenames": [b"x.png"] * n,
        }
        if str_keys:
            d = {k.decode(): v for k, v in d.items()}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=protocol)
        out[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return out


def test_cifar10_binary_layout_pixels_and_labels(tmp_path):
    files = _write_bin(tmp_path / "cifar-10-batches-bin")
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):  # the folder or its parent
        loader = cifar10(root, train=True, batch_size=4, augment=False, normalize=False)
        ds = loader.dataset
        assert len(ds) == 30 and ds.classes[3] == "class3"
        data, labels = files["data_batch_1.bin"]
        img, label = ds[1]
        assert int(label) == int(labels[1])
        # CHW, row-major: channel c at data[c*1024 + y*32 + x]
        assert torch.allclose(img, torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255)
        assert img[2, 5, 7] == pytest.approx(data[1][2 * 1024 + 5 * 32 + 7] / 255)
        _, l6 = files["data_batch_2.bin"]
        assert int(ds[6][1]) == int(l6[0])  # batches are concatenated in order
    test = cifar10(tmp_path, train=False, batch_size=4)
    assert len(test.dataset) == 6 and len(test) == 2
    x, y = next(iter(test))
    assert tuple(x.shape) == (4, 3, 32, 32) and y.dtype == torch.int64


@pytest.mark.parametrize("protocol, str_keys", [(2, False), (4, False), (5, True)])
def test_cifar10_python_layout(tmp_path, protocol, str_keys):
    files = _write_py(tmp_path / "cifar-10-batches-py", protocol=protocol, str_keys=str_keys)
    ds = cifar10(tmp_path, train=False, augment=False, normalize=False).dataset
    data, labels = files["test_batch"]
    assert len(ds) == 6 and ds.classes[0] == "c0"
    for i in range(6):
        img, label = ds[i]
        assert int(label) == int(labels[i])
        assert torch.equal(
            (img * 255).round().to(torch.uint8), torch.from_numpy(data[i].reshape(3, 32, 32))
        )


def test_cifar10_normalisation_and_augmentation(tmp_path):
    _write_bin(tmp_path)
    plain = cifar10(tmp_path, train=True, augment=False, normalize=False).dataset
    norm = cifar10(tmp_path, train=True, augment=False).dataset
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert torch.allclose(norm[0][0], (plain[0][0] - mean) / std, atol=1e-6)
    aug = cifar10(tmp_path, train=True, normalize=False).dataset  # default: augment the train split
    assert aug.augment is True
    assert cifar10(tmp_path, train=False).dataset.augment is False
    torch.manual_seed(0)
    src = plain[0][0]
    for _ in range(10):
        out = aug[0][0]
        assert out.shape == (3, 32, 32)
        # a crop of the 4-pixel zero-padded image, maybe flipped: some 24x24 window matches
        found = False
        for o in (out, out.flip(-1)):
            pad = torch.nn.functional.pad(src, (4, 4, 4, 4))
            for i in range(9):
                for j in range(9):
                    if torch.equal(pad[:, i : i + 32, j : j + 32], o):
                        found = True
        assert found
    custom = cifar10(tmp_path, augment=lambda im: 1 - im, normalize=False).dataset
    assert torch.allclose(custom[0][0], 1 - plain[0][0])


def test_cifar10_missing_and_incomplete(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist") as e:
        cifar10(tmp_path / "nowhere")
    assert isinstance(e.value, FileNotFoundError)
    assert "data_batch_1.bin" in str(e.value) and "never downloads" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no CIFAR-10"):
        cifar10(tmp_path / "empty")
    _write_bin(tmp_path / "b")
    os.remove(tmp_path / "b" / "data_batch_4.bin")
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_4\.bin is missing"):
        cifar10(tmp_path / "b")
    cifar10(tmp_path / "b", train=False)  # the test split is complete


def test_cifar10_malformed_files(tmp_path):
    _write_bin(tmp_path / "bin")
    with open(tmp_path / "bin" / "test_batch.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError, match="not a positive multiple of 3073"):
        cifar10(tmp_path / "bin", train=False)

    _write_bin(tmp_path / "bin100")
    rec = np.zeros((2, 3073), dtype=np.uint8)
    rec[:, 0] = 42
    rec.tofile(tmp_path / "bin100" / "test_batch.bin")
    with pytest.raises(DataError, match=r"labels must be in 0\.\.9"):
        cifar10(tmp_path / "bin100", train=False)

    _write_py(tmp_path / "py")
    with open(tmp_path / "py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [1, 2]}, f)
    with pytest.raises(DataError, match="expected keys 'data' and 'labels'"):
        cifar10(tmp_path / "py", train=False)
    with open(tmp_path / "py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.float32), b"labels": [1, 2]}, f)
    with pytest.raises(DataError, match=r"uint8 array of shape \(N, 3072\)"):
        cifar10(tmp_path / "py", train=False)
    with open(tmp_path / "py" / "test_batch", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        cifar10(tmp_path / "py", train=False)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar10_python_batches_cannot_run_code(tmp_path):
    _write_py(tmp_path / "py")
    marker = tmp_path / "pwned"
    with open(tmp_path / "py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        cifar10(tmp_path / "py", train=False)
    assert not marker.exists()


def test_cifar10_bad_arguments(tmp_path):
    _write_bin(tmp_path)
    with pytest.raises(ConfigError):
        cifar10(tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="augment"):
        cifar10(tmp_path, augment="yes")


# --- MNIST-1D --------------------------------------------------------------------------------


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


# --- English sentences -------------------------------------------------------------------------


def test_english_sentences():
    s = english_sentences(20, seed=1)
    assert len(s) == 20 and len(set(s)) == 20
    assert s == english_sentences(20, seed=1)
    assert all(8 <= len(x.split()) <= 40 and x[0].isupper() for x in s)
    with pytest.raises(ConfigError):
        english_sentences(10**6)
