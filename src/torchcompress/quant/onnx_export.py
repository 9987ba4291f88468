"""ONNX export (being written)."""

from __future__ import annotations

from typing import Any


def export_onnx(model: Any, example_inputs: Any, path: Any, **kwargs: Any) -> None:
    raise NotImplementedError("export_onnx is being written")
