"""Save/load round trips, finalize, the sparsity report and the profiler costs of masked layers."""

from __future__ import annotations

import copy
import json
import os
import pickle

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.costs import lookup_cost
from torchcompress.errors import CompressionStateError, DependencyError, SelectionError
from torchcompress.sparsity.costs import masked_cost
from torchcompress.sparsity.masking import get_mask, is_masked

from .conftest import TinyCNN


def test_save_load_round_trip(cnn: nn.Module, cnn_data: list, tmp_path) -> None:
    tc.prune(
        cnn,
        tc.PruneConfig(sparsity=0.6, criterion="wanda", scope="global"),
        cnn_data,
        exclude=["fc"],
    )
    tc.prune(cnn, tc.PruneConfig(sparsity=0.5, pattern="channel"), include=["fc"])
    path = tmp_path / "pruned.safetensors"
    tc.save(cnn, path)
    fresh = TinyCNN()
    tc.load(path, fresh)
    for (n, a), (_, b) in zip(cnn.named_modules(), fresh.named_modules()):
        for t in ("weight", "bias"):
            ma, mb = get_mask(a, t), get_mask(b, t)
            assert (ma is None) == (mb is None), (n, t)
            if ma is not None:
                assert torch.equal(ma, mb)
    cnn.eval(), fresh.eval()
    x = cnn_data[0][0]
    assert torch.equal(cnn(x), fresh(x))
    # the loaded model re-prunes like the original (originals under the masks were saved too)
    tc.prune(cnn, tc.PruneConfig(sparsity=0.8), exclude=["fc"])
    tc.prune(fresh, tc.PruneConfig(sparsity=0.8), exclude=["fc"])
    assert torch.equal(cnn(x), fresh(x))
    hist = tc.io.describe(path)["history"]
    assert [h["step"] for h in hist] == ["prune", "prune"]
    assert lookup_cost(fresh.conv1) is masked_cost


def test_save_load_resized_masked_layer(tmp_path) -> None:
    m = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    m[0], m[2] = nn.Linear(8, 4), nn.Linear(4, 2)  # as after channel removal
    tc.prune(m, tc.PruneConfig(pattern="2:4"))
    tc.save(m, tmp_path / "m.safetensors")
    fresh = tc.load(
        tmp_path / "m.safetensors", nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    )
    assert fresh[0].out_features == 4 and torch.equal(get_mask(fresh[0]), get_mask(m[0]))


def test_load_into_wrong_architecture(tmp_path, mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig())
    tc.save(mlp, tmp_path / "m.safetensors")
    wrong = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
    with pytest.raises(SelectionError, match="'2'"):
        tc.load(tmp_path / "m.safetensors", wrong)
    assert not is_masked(wrong[0])  # left as it was


def test_finalize(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.7, pattern="channel"))
    x = torch.randn(3, 16)
    y = mlp(x)
    params = [id(p) for p in mlp.parameters()]
    tc.finalize(mlp)
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in mlp)
    assert torch.equal(mlp(x), y)
    assert [id(p) for p in mlp.parameters()] == params
    assert set(mlp.state_dict()) == {f"{i}.{t}" for i in (0, 2, 4) for t in ("weight", "bias")}
    pickle.dumps(mlp)  # plain modules pickle again
    assert tc.sparsity_report(mlp)["0"].zero_channels == round(0.7 * 32)
    with pytest.raises(CompressionStateError, match="no pruning masks"):
        tc.finalize(mlp)


def test_finalize_subset(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig())
    tc.finalize(mlp, exclude=["4"])
    assert not is_masked(mlp[0]) and is_masked(mlp[4])


def test_report(cnn: nn.Module) -> None:
    tc.prune(cnn, tc.PruneConfig(sparsity=0.5, pattern="2:4"), include=["conv2", "fc"])
    rep = tc.sparsity_report(cnn)
    assert [r.name for r in rep.layers] == ["conv1", "conv2", "fc"]
    assert rep["conv1"].masked is False and rep["conv1"].structure == "dense"
    assert rep["conv2"].structure == "2:4" and rep["conv2"].zeros == 16 * 8 * 9 // 2
    assert rep.params == 8 * 27 + 16 * 72 + 64 and rep.zeros == (16 * 72 + 64) // 2
    n_params = sum(p.numel() for p in TinyCNN().parameters())
    assert rep.model_params == n_params
    d = rep.to_dict()
    json.dumps(d)
    assert d["layers"][1]["sparsity"] == 0.5 and d["sparsity"] == rep.sparsity
    md = rep.to_markdown()
    assert md.startswith("| layer |") and "| conv2 | Conv2d | 16x8x3x3 |" in md
    text = str(rep)
    assert "whole model" in text and "save no time" in text
    assert "SparsityReport(3 layers" in repr(rep)


def test_report_counts_baked_zeros(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.4))
    before = tc.sparsity_report(mlp).to_dict()
    tc.finalize(mlp)
    after = tc.sparsity_report(mlp).to_dict()
    assert before["zeros"] == after["zeros"] and not any(r["masked"] for r in after["layers"])


def test_masked_cost_counts() -> None:
    conv = nn.Conv2d(8, 4, 3, padding=1)
    lin = nn.Linear(64, 16)
    tc.prune(nn.Sequential(conv), tc.PruneConfig(pattern="2:4"))
    tc.prune(nn.Sequential(lin), tc.PruneConfig(sparsity=0.75))
    x = torch.randn(2, 8, 5, 5)
    out = conv(x)
    c = lookup_cost(conv)(conv, (x,), {}, out)
    assert c.macs == 2 * 25 * 4 * 8 * 9 and c.effective_macs == c.macs // 2
    assert c.params == 4 * 72 + 4 and c.nonzero_params == 4 * 72 // 2 + int((conv.bias != 0).sum())
    assert "2:4" in c.note and "no speed-up" in c.note
    xl = torch.randn(3, 5, 64)
    cl = lookup_cost(lin)(lin, (xl,), {}, lin(xl))
    assert cl.macs == 15 * 1024 and cl.effective_macs == 15 * 256
    assert "unstructured" in cl.note


def test_profile_sees_masks(mlp: nn.Module) -> None:
    profiling = pytest.importorskip("torchcompress.profiling")
    if not hasattr(profiling, "profile"):
        pytest.skip("tc.profile not built yet")
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    prof = tc.profile(mlp, torch.randn(2, 16))
    text = str(prof)
    assert "no speed-up" in text


def test_deepcopy_then_prune_independent(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.3))
    twin = copy.deepcopy(mlp)
    tc.prune(twin, tc.PruneConfig(sparsity=0.9))
    assert tc.sparsity_report(mlp).sparsity == pytest.approx(0.3, abs=1e-2)


def test_semi_structured_unavailable_on_cpu(mlp: nn.Module) -> None:
    if tc.sparsity.semi_structured_available():
        pytest.skip("a capable GPU is present")
    tc.prune(mlp, tc.PruneConfig(pattern="2:4"))
    with pytest.raises(DependencyError, match=r"compute capability 8\.0"):
        tc.finalize(mlp, semi_structured=True)
    assert is_masked(mlp[0])  # untouched


@pytest.mark.gpu
def test_semi_structured_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if not tc.sparsity.semi_structured_available():
        pytest.skip("needs compute capability 8.0+")
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.Linear(256, 10))
        .half()
        .cuda()
    )
    tc.prune(model, tc.PruneConfig(pattern="2:4"), exclude=["3"])
    x = torch.randn(128, 256, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        ref = model(x)
    tc.finalize(model, semi_structured=True)
    from torch.sparse import SparseSemiStructuredTensor

    assert isinstance(model[0].weight, SparseSemiStructuredTensor)
    assert isinstance(model[2].weight, SparseSemiStructuredTensor)
    assert not isinstance(model[3].weight, SparseSemiStructuredTensor)  # dense layer stays dense
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_saved_file_has_no_pickle(tmp_path, mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig())
    path = tmp_path / "m.safetensors"
    tc.save(mlp, path)
    desc = tc.io.describe(path)
    rec = [r for r in desc["modules"] if r["codec"] == "sparsity.mask"]
    assert [r["name"] for r in rec] == ["0", "2", "4"]
    assert os.path.getsize(path) > 0
