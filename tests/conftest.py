"""Shared test set-up."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist every worker is a process: one torch thread each keeps the cores busy without
# oversubscribing them (two workers with two threads each spin far more than they compute).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
