"""The public surface: importable, documented, light to import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import torchcompress as tc


def test_version_single_source() -> None:
    from importlib.metadata import version

    assert tc.__version__ == version("torchcompress")


@pytest.mark.parametrize("name", [n for n in tc.__all__ if n != "__version__"])
def test_every_public_name_resolves_and_is_documented(name: str) -> None:
    obj = getattr(tc, name)
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 20, f"tc.{name} has no real docstring"


def test_public_functions_and_classes_of_submodules_are_documented() -> None:
    missing = []
    for sub in [s for s in tc.__all__ if inspect.ismodule(getattr(tc, s, None))]:
        mod = getattr(tc, sub)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                missing.append(f"{sub}.{name}")
    assert not missing, f"undocumented public names: {missing}"


def test_import_is_light() -> None:
    code = (
        "import sys, torchcompress, torch\n"
        "heavy = [m for m in ('transformers', 'onnx', 'onnxruntime', 'sklearn', 'torchcompress.quant', "
        "'torchcompress.sparsity', 'torchcompress.lowrank') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = tc.no_such_verb  # type: ignore[attr-defined]


def test_hasattr_is_false_for_names_not_built_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    # the planned surface: a submodule and a verb whose modules do not exist (yet)
    monkeypatch.setattr(tc, "_SUBMODULES", (*tc._SUBMODULES, "not_built_yet"))
    monkeypatch.setattr(tc, "_EXPORTS", {**tc._EXPORTS, "planned": "torchcompress.not_built_yet"})
    for name in ("not_built_yet", "planned", "no_such_name"):
        assert hasattr(tc, name) is False
        with pytest.raises(AttributeError, match=r"not built yet|no attribute"):
            getattr(tc, name)
    import importlib.util

    for name in tc._SUBMODULES:  # distill, today
        built = importlib.util.find_spec(f"torchcompress.{name}") is not None
        assert hasattr(tc, name) is built
        assert (name in tc.__all__) is built and (name in dir(tc)) is built


def test_dir_and_all_list_only_what_exists() -> None:
    for name in [*tc.__all__, *dir(tc)]:
        assert hasattr(tc, name), name
