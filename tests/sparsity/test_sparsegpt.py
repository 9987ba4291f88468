"""SparseGPT and sequential Wanda: exact sparsity and N:M patterns, lower output error than
magnitude pruning, tc.prune's mask format (report, finalize, re-pruning, save/load), the sparse +
4-bit chain, full runs on tiny BERT / GPT-2, and bad input."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CalibrationError, ConfigError, SelectionError
from torchcompress.sparsity.masking import get_mask, is_masked
from torchcompress.sparsity.sparsegpt import prune_mask, sparsegpt_matrix
from torchcompress.testing import BlockNet, token_batches


def _correlated(rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, generator=g) @ torch.randn(n, n, generator=g)


def _data(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(16, 16, generator=g)
    return [torch.randn(64, 16, generator=g) @ mix for _ in range(n)]


def _rel_err(model: nn.Module, ref: nn.Module, data: list, fn=lambda m, d: m(d)) -> float:
    with torch.no_grad():
        r = [fn(ref, d) for d in data]
        o = [fn(model, d) for d in data]
    return sum(float((a - b).pow(2).sum()) for a, b in zip(o, r)) / sum(
        float(b.pow(2).sum()) for b in r
    )


def test_prune_mask_counts_and_forced() -> None:
    s = torch.arange(12.0).reshape(2, 6)
    forced = torch.zeros(2, 6, dtype=torch.bool)
    forced[0, 5] = True  # the best-scored weight is already pruned: it stays pruned and counts
    keep = prune_mask(s, forced, count=5)
    assert int((~keep).sum()) == 5 and not bool(keep[0, 5])
    keep = prune_mask(s, forced, count=torch.tensor([2, 3]))
    assert (~keep).sum(-1).tolist() == [2, 3] and not bool(keep[0, 5])
    keep = prune_mask(s, forced, nm=(1, 3))
    assert keep.reshape(2, 2, 3).sum(-1).tolist() == [[1, 1], [1, 1]]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
@pytest.mark.parametrize("per_row", [False, True])
def test_exact_sparsity_and_lower_error_than_magnitude(sparsity: float, per_row: bool) -> None:
    x, w = _correlated(512, 96, 0), torch.randn(10, 96)
    xtx = x.T @ x / 512
    out, keep = sparsegpt_matrix(w, xtx, sparsity=sparsity, per_row=per_row, block_size=32)
    if per_row:
        count: int | torch.Tensor = torch.full((10,), round(sparsity * 96))
        assert (~keep).sum(-1).tolist() == [round(sparsity * 96)] * 10
    else:
        count = round(sparsity * 960)
        assert int((~keep).sum()) == count
    assert bool((out[~keep] == 0).all())
    mag = prune_mask(w.abs(), torch.zeros_like(keep), count=count)  # the same comparison group
    err = lambda v: float(((x @ (w - v).T) ** 2).sum())  # noqa: E731
    assert err(out) < err(w * mag)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_exact_nm_pattern(n: int, m: int) -> None:
    x, w = _correlated(256, 32, 1), torch.randn(6, 32)
    out, keep = sparsegpt_matrix(w, x.T @ x / 256, nm=(n, m), block_size=20)
    assert keep.reshape(6, 32 // m, m).sum(-1).unique().tolist() == [n]
    assert bool((out[~keep] == 0).all())


def test_already_pruned_weights_stay_pruned() -> None:
    x, w = _correlated(256, 16, 2), torch.randn(4, 16)
    pruned = torch.zeros(4, 16, dtype=torch.bool)
    pruned[:, :6] = True  # 37.5% already pruned
    _, keep = sparsegpt_matrix(w, x.T @ x / 256, sparsity=0.5, pruned=pruned)
    assert not bool(keep[pruned].any()) and int((~keep).sum()) == 32


# --- the verb ---------------------------------------------------------------------------------


def _block_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if n.startswith("blocks.") and n.endswith(("fc1", "fc2"))
    ]


@pytest.mark.parametrize("config", [tc.PruneConfig(sparsity=0.6), tc.PruneConfig(pattern="2:4")])
def test_blocknet_sparsegpt_and_wanda(config: tc.PruneConfig) -> None:
    torch.manual_seed(0)
    model, data = BlockNet(), _data()
    mag = tc.prune(copy.deepcopy(model), config, include="blocks")
    sg = tc.sparsegpt(copy.deepcopy(model), config, data)
    wanda = tc.sparsegpt(copy.deepcopy(model), config, data, method="wanda")
    report = tc.sparsity_report(sg)
    for name, module in _block_layers(sg):
        mask = get_mask(module)
        assert mask is not None
        if config.pattern == "n:m":
            assert mask.reshape(mask.shape[0], -1, 4).sum(-1).unique().tolist() == [2]
        else:
            assert int((~mask).sum()) == round(0.6 * mask.numel())
        want = round(config.target_sparsity * mask.numel()) / mask.numel()
        assert report[name].sparsity == pytest.approx(want, abs=1e-9)
        assert bool((module.weight[~mask] == 0).all())
    assert not is_masked(sg.head)
    assert _rel_err(sg, model, data) < _rel_err(mag, model, data)
    assert _rel_err(sg, model, data) < _rel_err(wanda, model, data)
    entry = tc.io.history(wanda)[-1]
    assert entry["step"] == "sparsegpt" and entry["config"]["method"] == "wanda"


def test_wanda_by_criterion_and_per_row_scope() -> None:
    model, data = BlockNet(), _data()
    with torch.no_grad():
        for b in model.blocks:
            b.norm.weight[:3] = 8.0  # salient input channels: where Wanda beats magnitude
    cfg = tc.PruneConfig(sparsity=0.5, criterion="wanda", scope="output")
    wanda = tc.sparsegpt(copy.deepcopy(model), cfg, data)
    assert tc.io.history(wanda)[-1]["config"]["method"] == "wanda"
    mag = tc.prune(copy.deepcopy(model), cfg.replace(criterion="magnitude"), include="blocks")
    assert _rel_err(wanda, model, data) < _rel_err(mag, model, data)
    for _, module in _block_layers(wanda):
        mask = get_mask(module)
        assert (~mask).sum(-1).unique().tolist() == [mask.shape[1] // 2]
        # Wanda does not move the weights that stay
        assert bool((module.parametrizations.weight.original[mask] != 0).all())


def test_mask_format_finalize_reprune_and_save(tmp_path) -> None:
    model, data = BlockNet(), _data()
    tc.sparsegpt(model, tc.PruneConfig(sparsity=0.5), data)
    first = {n: get_mask(m).clone() for n, m in _block_layers(model)}
    tc.sparsegpt(model, tc.PruneConfig(sparsity=0.7), data)  # re-prune: keeps what is pruned
    for n, m in _block_layers(model):
        mask = get_mask(m)
        assert not bool((mask & ~first[n]).any())
        assert int((~mask).sum()) == round(0.7 * mask.numel())
    with pytest.raises(ConfigError, match=r"sparsity=0\.5"):
        tc.prune(model, tc.PruneConfig(sparsity=0.5), include="blocks")  # tc.prune sees the masks
    path = os.path.join(tmp_path, "m.safetensors")
    tc.save(model, path)
    fresh = tc.load(path, BlockNet())
    torch.testing.assert_close(fresh(data[0]), model(data[0]))
    tc.finalize(model)
    assert type(model.blocks[0].fc1) is nn.Linear
    torch.testing.assert_close(model(data[0]), fresh(data[0]))


def test_sparse_then_4bit_keeps_the_pattern() -> None:
    model, data = BlockNet(), _data()
    tc.sparsegpt(model, tc.PruneConfig(pattern="2:4"), data)
    masks = {n: get_mask(m).clone() for n, m in _block_layers(model)}
    tc.gptq(model, tc.QuantConfig(weight=tc.IntSpec(4), activation=None), data)
    for n, mask in masks.items():
        w = model.get_submodule(n).quantized_weight()
        assert bool((w[~mask] == 0).all())
        assert (w != 0).reshape(w.shape[0], -1, 4).sum(-1).max() <= 2


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.hf
@pytest.mark.parametrize("make", ["tiny_bert", "tiny_gpt2"])
def test_full_runs_on_tiny_transformers(transformers, make: str) -> None:
    from torchcompress import testing

    torch.manual_seed(0)
    model, data = getattr(testing, make)(), token_batches(8)
    blocks = [n for n, _ in tc.calibration.find_blocks(model)]
    cfg = tc.PruneConfig(pattern="2:4")
    sg = tc.sparsegpt(copy.deepcopy(model), cfg, data)
    mag = tc.prune(copy.deepcopy(model), cfg, include=blocks)
    assert _rel_err(sg, model, data, _hidden) < _rel_err(mag, model, data, _hidden)
    report = tc.sparsity_report(sg)
    inside = [r for r in report.layers if any(r.name.startswith(b + ".") for b in blocks)]
    assert inside and all(r.sparsity == pytest.approx(0.5) for r in inside)


def test_bad_input() -> None:
    model, data = BlockNet(), _data(1)
    with pytest.raises(ConfigError, match="pattern='channel'"):
        tc.sparsegpt(model, tc.PruneConfig(pattern="channel"), data)
    with pytest.raises(ConfigError, match="scope='global'"):
        tc.sparsegpt(model, tc.PruneConfig(scope="global"), data)
    with pytest.raises(ConfigError, match="criterion='taylor'"):
        tc.sparsegpt(model, tc.PruneConfig(criterion="taylor"), data)
    with pytest.raises(ConfigError, match="method="):
        tc.sparsegpt(model, tc.PruneConfig(), data, method="obc")
    with pytest.raises(ConfigError, match="m=3 to divide"):
        tc.sparsegpt(model, tc.PruneConfig(pattern="1:3"), data)
    with pytest.raises(CalibrationError, match="saw 8 input rows for its 16 inputs"):
        tc.sparsegpt(model, tc.PruneConfig(), [torch.randn(8, 16)])
    with pytest.raises(SelectionError, match="outside the blocks"):
        tc.sparsegpt(model, tc.PruneConfig(), data, include=["head"])
    with pytest.raises(SelectionError, match="matches no module"):
        tc.sparsegpt(model, tc.PruneConfig(), data, blocks="encoder.layer")
    assert not any(is_masked(m) for m in model.modules()) and not tc.io.history(model)
