"""torchcompress.forms: the table of forms and admissible orders, recognisers, carriers, checks."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress import forms
from torchcompress.errors import CompressionStateError, ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def recognisers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recognisers registered by a test are dropped after it."""
    saved = {k: list(v) for k, v in forms._RECOGNISERS.items()}
    monkeypatch.setattr(forms, "_RECOGNISERS", saved)


def test_docs_table_is_generated_from_the_registry() -> None:
    mod = runpy.run_path(str(ROOT / "docs" / "assemble_readme.py"))
    doc = (ROOT / "docs" / "composition.md").read_text()
    assert mod["assemble_forms"](doc) == doc, "run `python docs/assemble_readme.py`"
    table = forms.markdown_table()
    for name in forms.FORMS.names():
        assert f"| {name}" in table
    for verb in forms.VERBS.names():
        assert f"`{verb}`" in table


def test_every_blocked_rule_says_what_to_do() -> None:
    for f in forms.FORMS.names():
        for v in forms.VERBS.names():
            r = forms.rule(f, v)
            if not r.allowed:
                assert r.note, (f, v)
                assert r.first is None or r.first in forms.VERBS, (f, v, r.first)
    # a dense layer takes every verb
    assert all(forms.rule("dense", v).allowed for v in forms.VERBS.names())


def test_every_verb_makes_a_known_form_and_every_form_has_a_maker() -> None:
    made = {forms.VERBS.get(v).makes for v in forms.VERBS.names()}
    assert made <= set(forms.FORMS.names())
    for f in forms.FORMS.names():
        by = forms.FORMS.get(f).made_by
        assert by == "" or forms.VERBS.get(by).makes == f


def test_check_order() -> None:
    assert forms.check_order("prune", "quantize").allowed
    assert "mask is dropped" in forms.check_order("prune", "factorize").note
    assert "leaves" in forms.check_order("prune", "convert").note  # convert acts on quantized
    with pytest.raises(CompressionStateError, match=r"tc\.prune cannot follow tc\.quantize"):
        forms.check_order("quantize", "prune")
    with pytest.raises(CompressionStateError, match=r"tc\.factorize"):
        forms.check_order("convert", "factorize")
    with pytest.raises(ConfigError, match=r"Unknown verb 'prun'.*'prune'"):
        forms.check_order("prun", "quantize")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def test_layer_forms_of_masked_and_factorized_layers() -> None:
    m = _mlp()
    assert forms.layer_forms(m) == {}
    tc.prune(m, tc.PruneConfig(sparsity=0.5), include=["0"])
    tc.factorize(m, tc.LowRankConfig(rank=2), include=["2"])
    tc.prune(m, tc.PruneConfig(sparsity=0.5), include=["2"])  # prunes the factors
    found = forms.layer_forms(m)
    assert found == {"0": {"masked"}, "2": {"factorized", "masked"}}
    assert forms.layer_forms(m, include=["2"]) == {"2": {"factorized", "masked"}}
    assert forms.layer_forms(m, exclude=["2"]) == {"0": {"masked"}}
    assert forms.layer_forms(m, targets=["2.first"]) == {"2.first": {"masked"}}


@pytest.mark.usefixtures("recognisers")
def test_check_names_every_offending_layer_at_once() -> None:
    class Fake(nn.Linear):
        """A stand-in for a family's layer in a blocking form."""

    forms.register_recogniser("kmeans", lambda mod: isinstance(mod, Fake))
    m = nn.Sequential(Fake(4, 4), nn.ReLU(), Fake(4, 4), nn.Linear(4, 2))
    with pytest.raises(CompressionStateError) as e:
        forms.check(m, "prune")
    msg = str(e.value)
    assert "'0', '2' (kmeans, made by tc.kmeans_quantize)" in msg
    assert "2 layers" in msg and "call tc.prune on the float model" in msg
    assert forms.check(m, "prune", include=["3"]) == {}  # outside the scope: fine
    assert forms.check(m, "merge_lowrank") == {"0": {"kmeans"}, "2": {"kmeans"}}  # not acted on
    with pytest.raises(ConfigError, match="Unknown verb"):
        forms.check(m, "sharpen")


@pytest.mark.usefixtures("recognisers")
def test_verbs_check_before_changing_anything() -> None:
    m = _mlp()
    tc.factorize(m, tc.LowRankConfig(rank=2), include=["2"])
    forms.register_recogniser("converted", lambda mod: getattr(mod, "_test_converted", False))
    m[2].first._test_converted = True  # as if the factor had been converted
    state = {k: v.clone() for k, v in m.state_dict().items()}
    for call in (
        lambda: tc.prune(m, tc.PruneConfig(sparsity=0.5)),
        lambda: tc.merge_lowrank(m),
        lambda: tc.factorize(m, tc.LowRankConfig(rank=2)),
    ):
        with pytest.raises(CompressionStateError, match=r"'2' \(converted"):
            call()
        assert m.state_dict().keys() == state.keys()
        assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())
    tc.prune(m, tc.PruneConfig(sparsity=0.5), include=["0"])  # other layers: fine


def test_carry_over_moves_a_mask_onto_a_parameter_and_reports_a_drop() -> None:
    lin = nn.Linear(6, 4)
    tc.prune(nn.Sequential(lin), tc.PruneConfig(sparsity=0.5))
    assert forms.forms_of(lin) == {"masked"} and forms.carriable(lin)

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(6, 4))  # stored transposed

    h = Holder()
    (carried,) = forms.carry_over(lin, h, lambda name, t: t.t())
    assert carried.kept and carried.form == "masked"
    assert torch.equal(h.weight == 0, (lin.weight == 0).t())
    lowrank = tc.lowrank.LowRankLinear(6, 4, rank=2)
    (dropped,) = forms.carry_over(lin, lowrank)
    assert not dropped.kept and "dropped" in dropped.note
    assert forms.carry_over(nn.Linear(2, 2), h) == []
