"""tc.prune: exact levels, global ranking, overrides, re-pruning, errors, data handling."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError, SelectionError, UnsupportedModuleError
from torchcompress.sparsity.masking import get_mask, is_masked


def _zeros(m: nn.Module) -> int:
    return int((m.weight == 0).sum())


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.77, 0.9, 0.99])
def test_layer_scope_exact(cnn: nn.Module, s: float) -> None:
    tc.prune(cnn, tc.PruneConfig(sparsity=s))
    for m in _layers(cnn):
        assert _zeros(m) == round(s * m.weight.numel())


@pytest.mark.parametrize("crit", ["magnitude", "random", "taylor", "fisher", "wanda", "l2"])
def test_global_scope_exact(cnn: nn.Module, cnn_data: list, crit: str) -> None:
    tc.prune(cnn, tc.PruneConfig(sparsity=0.6, scope="global", criterion=crit), cnn_data)
    total = sum(m.weight.numel() for m in _layers(cnn))
    assert sum(_zeros(m) for m in _layers(cnn)) == round(0.6 * total)


def test_global_magnitude_is_one_threshold(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.7, scope="global"))
    kept = torch.cat([m.weight[m.weight != 0].abs() for m in _layers(mlp)])
    pruned = torch.cat(
        [m.parametrizations.weight.original[~get_mask(m)].abs() for m in _layers(mlp)]
    )
    assert pruned.max() <= kept.min()


def test_global_matches_torch_global_unstructured(mlp: nn.Module) -> None:
    from torch.nn.utils import prune as tprune

    ref = copy.deepcopy(mlp)
    tprune.global_unstructured(
        [(m, "weight") for m in _layers(ref)], pruning_method=tprune.L1Unstructured, amount=0.55
    )
    tc.prune(mlp, tc.PruneConfig(sparsity=0.55, scope="global"))
    for a, b in zip(_layers(mlp), _layers(ref)):
        assert torch.equal(a.weight != 0, b.weight != 0)


def test_min_density_floor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # tiny weights: plain global would empty layer 1
    ref = copy.deepcopy(model)
    tc.prune(ref, tc.PruneConfig(sparsity=0.5, scope="global"))
    assert _zeros(ref[1]) == 400
    tc.prune(model, tc.PruneConfig(sparsity=0.5, scope="global", min_density=0.1))
    assert _zeros(model[1]) == 400 - 40
    assert _zeros(model[0]) + _zeros(model[1]) == 400


def test_global_normalizations_change_allocation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20))
    with torch.no_grad():
        model[1].weight.mul_(0.1)
    counts = {}
    for how in ("none", "mean", "l2", "max", "lamp"):
        m = copy.deepcopy(model)
        tc.prune(m, tc.PruneConfig(sparsity=0.5, scope="global", normalize=how))
        counts[how] = _zeros(m[1])
        assert _zeros(m[0]) + _zeros(m[1]) == 400
    assert counts["none"] > 300  # raw scores pile onto the small layer
    for how in ("mean", "l2", "max", "lamp"):  # scale-free: both layers alike
        assert abs(counts[how] - 200) < 30


def test_lamp_by_hand() -> None:
    from torchcompress.sparsity.functional import normalize_scores

    s = torch.tensor([3.0, 1.0, 2.0])
    out = normalize_scores(s, torch.ones(3, dtype=torch.bool), "lamp")
    torch.testing.assert_close(out, torch.tensor([9 / 9, 1 / 14, 4 / 13], dtype=torch.float64))


def test_output_scope_each_row(mlp: nn.Module, mlp_data: list) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5, criterion="wanda", scope="output"), mlp_data)
    for m in _layers(mlp):
        per_row = (m.weight == 0).sum(1)
        assert bool((per_row == round(0.5 * m.weight.shape[1])).all())


def test_overrides_by_pattern(cnn: nn.Module) -> None:
    tc.prune(
        cnn,
        tc.PruneConfig(sparsity=0.5),
        overrides={
            "conv*": {"sparsity": 0.25},
            "conv2": {"sparsity": 0.75},
            "fc": {"pattern": "2:4"},
        },
    )
    assert _zeros(cnn.conv1) == round(0.25 * cnn.conv1.weight.numel())
    assert _zeros(cnn.conv2) == round(0.75 * cnn.conv2.weight.numel())
    assert bool(((cnn.fc.weight != 0).reshape(4, -1, 4).sum(-1) == 2).all())
    with pytest.raises(SelectionError, match="overrides pattern 'nope'"):
        tc.prune(cnn, tc.PruneConfig(sparsity=0.8), overrides={"nope": {"sparsity": 0.1}})
    with pytest.raises(ConfigError, match=r"overrides\['fc'\].*no field"):
        tc.prune(cnn, tc.PruneConfig(sparsity=0.8), overrides={"fc": {"sparsty": 0.1}})


def test_global_pools_by_config(mlp: nn.Module) -> None:
    tc.prune(
        mlp,
        tc.PruneConfig(sparsity=0.6, scope="global"),
        overrides={"4": {"sparsity": 0.2, "scope": "layer"}},
    )
    assert _zeros(mlp[4]) == round(0.2 * 96)
    assert _zeros(mlp[0]) + _zeros(mlp[2]) == round(0.6 * (512 + 768))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("crit", ["magnitude", "taylor", "wanda"])
def test_repruning_keeps_old_zeros(cnn: nn.Module, cnn_data: list, scope: str, crit: str) -> None:
    tc.prune(cnn, tc.PruneConfig(sparsity=0.4, scope=scope, criterion=crit), cnn_data)
    old = {id(m): get_mask(m).clone() for m in _layers(cnn)}
    # train a bit so that the scores move
    opt = torch.optim.SGD(cnn.parameters(), lr=0.5, momentum=0.9)
    for x, y in cnn_data:
        opt.zero_grad()
        nn.functional.cross_entropy(cnn(x), y).backward()
        opt.step()
    tc.prune(cnn, tc.PruneConfig(sparsity=0.7, scope=scope, criterion=crit), cnn_data)
    total = 0
    for m in _layers(cnn):
        new = get_mask(m)
        assert bool((new <= old[id(m)]).all())  # nothing regrew
        total += _zeros(m)
        if scope == "layer":
            assert _zeros(m) == round(0.7 * m.weight.numel())
    assert total == pytest.approx(0.7 * sum(m.weight.numel() for m in _layers(cnn)), abs=1)


def test_repruning_same_target_is_noop(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    masks = [get_mask(m).clone() for m in _layers(mlp)]
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5, criterion="random"))
    assert all(torch.equal(a, get_mask(m)) for a, m in zip(masks, _layers(mlp)))


def test_lower_target_needs_regrow(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.8))
    with pytest.raises(ConfigError, match=r"Layer '0' is already 80.08% sparse.*regrow=True"):
        tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    assert _zeros(mlp[0]) == round(0.8 * 512)  # unchanged
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5, regrow=True))
    assert _zeros(mlp[0]) == 256
    # regrown weights come back with their stored values: the 50% largest of the originals
    w = mlp[0].parametrizations.weight.original.abs()
    assert torch.equal(mlp[0].weight != 0, w >= w.flatten().kthvalue(257).values)


def test_data_criterion_without_data(mlp: nn.Module) -> None:
    for crit in ("taylor", "fisher", "wanda"):
        with pytest.raises(DataError, match=f"criterion='{crit}'.*pass data="):
            tc.prune(mlp, tc.PruneConfig(criterion=crit))
    assert not any(is_masked(m) for m in _layers(mlp))


def test_bad_data_is_data_error(mlp: nn.Module) -> None:
    with pytest.raises(DataError, match="Batch 0"):
        tc.prune(mlp, tc.PruneConfig(criterion="wanda"), [torch.randn(2, 7)])
    with pytest.raises(DataError, match="no batch"):
        tc.prune(mlp, tc.PruneConfig(criterion="wanda"), [])
    assert not any(is_masked(m) for m in _layers(mlp))  # left as it was


def test_failure_leaves_model_unchanged(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.3))
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ConfigError):
        tc.prune(
            mlp,
            tc.PruneConfig(sparsity=0.99, scope="global", min_density=0.01),
            overrides={"4": {"sparsity": 0.1}},
        )
    after = mlp.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_bn_statistics_and_modes_restored(cnn: nn.Module, cnn_data: list) -> None:
    cnn.train()
    cnn.bn2.eval()  # a mixed state must come back exactly
    stats = {
        k: v.clone() for k, v in cnn.state_dict().items() if "running" in k or "num_batches" in k
    }
    for crit in ("taylor", "fisher", "wanda"):
        tc.prune(cnn, tc.PruneConfig(sparsity=0.3, criterion=crit), cnn_data)
    assert cnn.training and cnn.bn1.training and not cnn.bn2.training
    for k, v in stats.items():
        assert torch.equal(cnn.state_dict()[k], v)
    assert all(p.grad is None for p in cnn.parameters())


def test_frozen_parameters_still_scored(mlp: nn.Module, mlp_data: list) -> None:
    for p in mlp.parameters():
        p.requires_grad_(False)
    tc.prune(mlp, tc.PruneConfig(criterion="taylor"), mlp_data)
    assert not any(p.requires_grad for p in mlp.parameters())
    assert _zeros(mlp[0]) == 256


def test_include_exclude(cnn: nn.Module) -> None:
    tc.prune(cnn, tc.PruneConfig(), include=["conv*"], exclude=["conv2"])
    assert is_masked(cnn.conv1) and not is_masked(cnn.conv2) and not is_masked(cnn.fc)
    with pytest.raises(UnsupportedModuleError, match="'bn1'"):
        tc.prune(cnn, tc.PruneConfig(), include=["bn1"])
    with pytest.raises(SelectionError, match="matches no module"):
        tc.prune(cnn, tc.PruneConfig(), include=["layer9"])


def test_tied_weights_left_alone() -> None:
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, nn.Linear(4, 4), head)
    tc.prune(model, tc.PruneConfig())
    assert not is_masked(model[2]) and is_masked(model[1])
    with pytest.raises(UnsupportedModuleError, match="tied"):
        tc.prune(model, tc.PruneConfig(), include=["2"])


def test_dict_config_and_history(mlp: nn.Module) -> None:
    tc.prune(mlp, {"sparsity": 0.25, "pattern": "unstructured"})
    hist = tc.io.history(mlp)
    assert hist[-1]["step"] == "prune" and hist[-1]["config"]["sparsity"] == 0.25
    with pytest.raises(ConfigError, match="PruneConfig"):
        tc.prune(mlp, 0.5)  # type: ignore[arg-type]


def test_dtype_float64_and_half(mlp: nn.Module, mlp_data: list) -> None:
    m64 = copy.deepcopy(mlp).double()
    data64 = [(x.double(), y) for x, y in mlp_data]
    tc.prune(m64, tc.PruneConfig(criterion="wanda"), data64)
    assert m64[0].weight.dtype == torch.float64 and _zeros(m64[0]) == 256
    m16 = copy.deepcopy(mlp).to(torch.bfloat16)
    tc.prune(m16, tc.PruneConfig(sparsity=0.5, pattern="2:4"))
    assert m16[0].weight.dtype == torch.bfloat16 and _zeros(m16[0]) == 256


def test_hf_bert_wanda_and_taylor() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    data = [
        {
            "input_ids": torch.randint(0, 50, (2, 8)),
            "attention_mask": torch.ones(2, 8, dtype=torch.long),
            "labels": torch.tensor([0, 1]),
        }
        for _ in range(2)
    ]
    tc.prune(
        model, tc.PruneConfig(pattern="2:4", criterion="wanda"), data, include=["bert.encoder"]
    )
    rep = tc.sparsity_report(model, include=["bert.encoder"])
    assert rep.sparsity == 0.5 and {r.structure for r in rep.layers} == {"2:4"}
    tc.prune(
        model, tc.PruneConfig(sparsity=0.6, criterion="taylor"), data, include=["bert.encoder"]
    )
    for r in tc.sparsity_report(model, include=["bert.encoder"]).layers:
        assert r.zeros == round(0.6 * r.params)
    with torch.no_grad():
        out = model(**{k: v for k, v in data[0].items() if k != "labels"})
    assert torch.isfinite(out.logits).all()


def test_every_layer_can_be_emptied_warns(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        model[1].weight.mul_(1e-6)
    import logging

    with caplog.at_level(logging.WARNING, logger="torchcompress.sparsity.pruning"):
        tc.prune(model, tc.PruneConfig(sparsity=0.5, scope="global"))
    assert "every weight of 1 is pruned" in caplog.text
    assert math.isclose(tc.sparsity_report(model).sparsity, 0.5)


def test_choose_fast_path_equals_sorted_path() -> None:
    from torchcompress.sparsity.functional import choose

    g = torch.Generator().manual_seed(0)
    scores = [torch.randint(0, 5, (50,), generator=g).float() for _ in range(3)]  # many ties
    sizes = [torch.ones(50, dtype=torch.long) for _ in range(3)]
    forced = [torch.rand(50, generator=g) < 0.2 for _ in range(3)]
    for s, f in zip(sizes, forced):
        s[f] = 0
    for need in (1, 17, 60, 100):
        fast = choose(scores, sizes, forced, need)
        slow = choose(scores, sizes, forced, need, budgets=[10**6] * 3)
        assert all(torch.equal(a, b) for a, b in zip(fast, slow))
        assert sum(int((c & ~f).sum()) for c, f in zip(fast, forced)) == need
    with pytest.raises(ConfigError, match="more weights can be pruned"):
        choose(scores, sizes, forced, 10**4)
    one, none = [torch.ones(50, dtype=torch.long)], [torch.zeros(50, dtype=torch.bool)]
    for need in (1, 25, 50):
        fast = choose(scores[:1], one, none, need)[0]
        assert torch.equal(fast, choose(scores[:1], one, none, need, budgets=[100])[0])
        assert int(fast.sum()) == need
