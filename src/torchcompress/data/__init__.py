"""Offline data sets.

Nothing here downloads. What ships with the dependencies, or is read from a copy you already have:

- :func:`digits` / :func:`digits_tensors`: scikit-learn's 1,797 real 8x8 handwritten digits
  (16 gray levels), upsampled to a configurable image size and channel count, with a stratified
  train/test split. The offline default for the demo, the tests and the benchmarks.
- :func:`cifar10`: a reader for a CIFAR-10 copy on disk (the standard binary or python batches).
- :func:`mnist1d`: the procedurally generated MNIST-1D benchmark (Greydanus 2020), built offline by
  the ``mnist1d`` package.
- :func:`english_sentences`: real English sentences from the documentation that ships with Python
  (``pydoc_data``), for transformer calibration and embedding-fidelity benchmarks.

One module per data set (:mod:`~torchcompress.data.handwritten_digits`,
:mod:`~torchcompress.data.cifar` with :mod:`~torchcompress.data.cifar_readers`,
:mod:`~torchcompress.data.mnist_1d`, :mod:`~torchcompress.data.sentences`) and the helpers they
share (:mod:`~torchcompress.data.common`).

Example:
    >>> import torchcompress as tc
    >>> train, test = tc.data.digits(batch_size=32, image_size=16, channels=1)
    >>> x, y = next(iter(train))
    >>> tuple(x.shape), y.dtype
    ((32, 1, 16, 16), torch.int64)
"""

from __future__ import annotations

from .cifar import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, CIFAR10Dataset, cifar10
from .handwritten_digits import DigitsTensors, digits, digits_tensors
from .mnist_1d import mnist1d, mnist1d_tensors
from .sentences import english_sentences

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10Dataset",
    "DigitsTensors",
    "cifar10",
    "digits",
    "digits_tensors",
    "english_sentences",
    "mnist1d",
    "mnist1d_tensors",
]
