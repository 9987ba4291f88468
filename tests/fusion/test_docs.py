"""The docstring examples of the fusion package run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["", ".functional", ".surgery", ".analysis", ".fusing"])
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module("torchcompress.fusion" + name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0, f"docstring examples failed in {name}"
