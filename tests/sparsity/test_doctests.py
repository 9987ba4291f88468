"""The Examples in the sparsity docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "",
    "calibration",
    "codecs",
    "config",
    "costs",
    "criteria",
    "functional",
    "masking",
    "patterns",
    "pruning",
    "regularizers",
    "report",
    "schedules",
    "semi_structured",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module("torchcompress.sparsity" + (f".{name}" if name else ""))
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
