"""The CIFAR-10 reader: both on-disk layouts, normalisation, augmentation, bad files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from torchcompress.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    cifar10,
)
from torchcompress.errors import ConfigError, DataError, DatasetNotFoundError


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
