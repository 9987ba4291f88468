"""The Examples in the quantization docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import torchcompress.quant as quant

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(quant.__path__, prefix="torchcompress.quant.")
)


@pytest.mark.parametrize("name", ["torchcompress.quant", *MODULES])
def test_docstring_examples(name: str) -> None:
    if name.endswith("onnx_export"):
        pytest.importorskip("onnx")
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
