"""Every docstring Example in the package runs and prints what it claims (one run over all modules).

Modules are found by walking the package, so a new module is covered without an edit here.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest
import torch

import torchcompress

# ``python -m torchcompress`` runs the command line on import
SKIP = {"torchcompress.__main__"}


def _modules() -> list[str]:
    names = [torchcompress.__name__]
    for info in pkgutil.walk_packages(torchcompress.__path__, prefix="torchcompress."):
        if info.name not in SKIP:
            names.append(info.name)
    return sorted(names)


MODULES = _modules()


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    """Examples start from the same state (seed, threads) wherever they run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


@pytest.mark.parametrize("name", MODULES)
def test_public_names_are_documented(name: str) -> None:
    mod = importlib.import_module(name)
    missing = [
        n
        for n in getattr(mod, "__all__", [])
        if (inspect.isclass(getattr(mod, n)) or inspect.isfunction(getattr(mod, n)))
        and not inspect.getdoc(getattr(mod, n))
    ]
    assert not missing, f"{name}: undocumented public names {missing}"


def test_the_walk_finds_every_module() -> None:
    """The doctests cover the families' modules that the per-family runs covered before."""
    for name in ("torchcompress.lowrank.rank_rules", "torchcompress.sparsity.semi_structured"):
        assert name in MODULES
