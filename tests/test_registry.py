"""torchcompress.registry.Registry."""

from __future__ import annotations

import pytest

from torchcompress.errors import ConfigError
from torchcompress.registry import Registry


def test_register_get_and_listing():
    reg: Registry = Registry("observer")

    @reg.register("minmax")
    class MinMax:
        pass

    reg.add("mse", 42)
    assert reg.get("minmax") is MinMax and reg.get("mse") == 42
    assert reg.names() == ["minmax", "mse"] and list(reg) == ["minmax", "mse"]
    assert len(reg) == 2 and "mse" in reg and "kl" not in reg
    assert repr(reg) == "Registry('observer', ['minmax', 'mse'])"


def test_duplicates_and_overwrite():
    reg: Registry = Registry("criterion")
    reg.add("l1", 1)
    with pytest.raises(ConfigError, match="already registered; pass overwrite=True"):
        reg.add("l1", 2)
    with pytest.raises(ConfigError):
        reg.register("l1")(3)
    reg.register("l1", overwrite=True)(3)
    assert reg.get("l1") == 3


def test_unknown_names_list_the_choices():
    reg: Registry = Registry("scheduler")
    for n in ("cosine", "linear", "step"):
        reg.add(n, n)
    with pytest.raises(ConfigError) as e:
        reg.get("cosin")
    msg = str(e.value)
    assert "Unknown scheduler 'cosin'" in msg and "'cosine', 'linear', 'step'" in msg
    assert "Did you mean 'cosine'?" in msg
    with pytest.raises(ConfigError):
        reg.get(["not", "hashable"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-empty string"):
        reg.add("", 1)
    with pytest.raises(ConfigError, match="non-empty string"):
        reg.add(3, 1)  # type: ignore[arg-type]
