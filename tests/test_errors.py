"""torchcompress.errors: the hierarchy and the check helpers."""

from __future__ import annotations

import pytest

from torchcompress import errors as E


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (E.ConfigError, ValueError),
        (E.SelectionError, ValueError),
        (E.UnsupportedModuleError, TypeError),
        (E.DataError, ValueError),
        (E.CalibrationError, E.DataError),
        (E.ShapeError, ValueError),
        (E.NumericalError, ValueError),
        (E.DatasetNotFoundError, FileNotFoundError),
        (E.DependencyError, ImportError),
        (E.CompressionStateError, RuntimeError),
    ],
)
def test_hierarchy(cls, builtin):
    assert issubclass(cls, E.TorchCompressError) and issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_every_exported_error_is_in_the_hierarchy():
    for name in E.__all__:
        obj = getattr(E, name)
        if isinstance(obj, type):
            assert issubclass(obj, E.TorchCompressError)


def test_did_you_mean():
    assert E.did_you_mean("cosin", ["cosine", "linear"]) == " Did you mean 'cosine'?"
    assert E.did_you_mean("zzz", ["cosine", "linear"]) == ""
    hint = E.did_you_mean("layer1.O", ["layer1.0", "layer1.1", "fc"])
    assert "'layer1.0'" in hint and "'layer1.1'" in hint and "fc" not in hint


def test_check_choice():
    E.check_choice("mode", "static", ("static", "dynamic"))
    with pytest.raises(E.ConfigError) as e:
        E.check_choice("mode", "statc", ("static", "dynamic"), owner="QuantConfig")
    msg = str(e.value)
    assert msg.startswith("QuantConfig.mode='statc' is not one of: 'static', 'dynamic'.")
    assert "Did you mean 'static'?" in msg
    with pytest.raises(E.ConfigError, match="bits=3 is not one of: 2, 4, 8"):
        E.check_choice("bits", 3, (2, 4, 8))


def test_check_range_bounds_and_types():
    E.check_range("x", 0, 0, 1)
    E.check_range("x", 1, 0, 1)
    E.check_range("x", 5, 0)
    E.check_range("x", -5, None, 0)
    with pytest.raises(E.ConfigError, match=r"x=0 is outside \(0, 1\]"):
        E.check_range("x", 0, 0, 1, low_inclusive=False)
    with pytest.raises(E.ConfigError, match=r"x=1 is outside \[0, 1\)"):
        E.check_range("x", 1, 0, 1, high_inclusive=False)
    with pytest.raises(E.ConfigError, match=r"S.x=-1 is outside \[0, inf\)"):
        E.check_range("x", -1, 0, owner="S")
    with pytest.raises(E.ConfigError, match="outside"):
        E.check_range("x", float("nan"), 0, 1)
    with pytest.raises(E.ConfigError, match="must be a number, got bool"):
        E.check_range("x", True, 0, 1)
    with pytest.raises(E.ConfigError, match="must be a number, got str"):
        E.check_range("x", "1", 0, 1)
