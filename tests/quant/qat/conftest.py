"""Fixtures of the quantization-aware training tests."""

from __future__ import annotations

import pytest

from ._common import digits


@pytest.fixture(scope="module")
def data():
    return digits()
