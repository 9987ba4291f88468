"""Shared set-up of the recipe tests: a small model and data that run in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import pytest

#: A model and data every recipe test can run quickly: MixedConvNet (10 classes) on 8x8 digits.
MODEL = "torchcompress.testing:MixedConvNet"
DATA = "digits(image_size=8, batch_size=256)"

HEAD = f"""
seed: 0
latency: false
steps:
  - model: {MODEL}
  - data: {{name: digits, kwargs: {{image_size: 8, batch_size: 256}}, calib_batches: 2}}
"""


@pytest.fixture
def write(tmp_path: Path):
    """write(text, name="recipe.yaml") -> the path of a recipe file holding text."""

    def _write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write
