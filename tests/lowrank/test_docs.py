"""The docstring examples of the low-rank family run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "torchcompress.lowrank",
    "torchcompress.lowrank.allocation",
    "torchcompress.lowrank.config",
    "torchcompress.lowrank.factorizing",
    "torchcompress.lowrank.functional",
    "torchcompress.lowrank.methods",
    "torchcompress.lowrank.modules",
    "torchcompress.lowrank.rank_rules",
    "torchcompress.lowrank.regularizers",
    "torchcompress.lowrank.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_public_names_are_documented() -> None:
    import inspect

    import torchcompress.lowrank as lr

    missing = [
        n
        for n in lr.__all__
        if (inspect.isclass(getattr(lr, n)) or inspect.isfunction(getattr(lr, n)))
        and not inspect.getdoc(getattr(lr, n))
    ]
    assert not missing
