"""The small fix made to torchcompress.select for this family: containers in include=."""

from __future__ import annotations

import pytest
from torch import nn

from torchcompress.errors import UnsupportedModuleError
from torchcompress.select import select_modules


def test_container_in_include_selects_its_layers() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.ReLU())
    assert [n for n, _ in select_modules(m, include=["1"])] == ["1.0"]
    with pytest.raises(UnsupportedModuleError, match="'2'"):
        select_modules(m, include=["2"])  # a leaf of the wrong type is still an error
    with pytest.raises(UnsupportedModuleError, match=r"'1\.1'"):
        select_modules(m, include=["1", "1.1"])
