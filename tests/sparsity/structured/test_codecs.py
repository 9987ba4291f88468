"""tc.save / tc.load of pruned models: the new shapes restored into a fresh unpruned model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchcompress as tc

from .conftest import CASES, pruned
from .models import MHANet, NormNet


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_into_a_fresh_unpruned_model(case: str, tmp_path: Path) -> None:
    build, inputs = CASES[case]
    x = inputs()
    m = pruned(build(), x)
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = build().eval()
    tc.load(path, fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), m(x))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }
    assert tc.io.history(fresh)[-1]["step"] == "prune_channels"
    # the loaded model prunes again (its attributes follow its tensors)
    tc.prune_channels(fresh, x, 0.25)
    assert fresh(x).shape == m(x).shape


def test_saved_file_describes_new_shapes_without_pickle(tmp_path: Path) -> None:
    m = pruned(MHANet(), torch.randn(2, 5, 6))
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    desc = tc.io.describe(path)
    rec = {r["name"]: r for r in desc["modules"]}
    mha = rec["mha"]
    assert mha["codec"] == "sparsity.structured.resized"
    assert mha["spec"]["attributes"]["num_heads"] == 2
    assert mha["spec"]["tensors"]["in_proj_weight"] == [24, 8]
    assert desc["codec_modules"]["sparsity.structured.resized"].startswith("torchcompress.")


def test_loading_into_the_wrong_architecture_is_clear(tmp_path: Path) -> None:
    m = pruned(MHANet(), torch.randn(2, 5, 6))
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    with pytest.raises(tc.errors.TorchCompressError):
        tc.load(path, NormNet())
