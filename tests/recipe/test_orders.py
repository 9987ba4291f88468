"""The known impossible orders: one table, and what it says to do instead."""

from __future__ import annotations

import copy

import pytest
import torch

import torchcompress as tc
from torchcompress.recipe import orders
from torchcompress.testing import TinyCNN

F = frozenset


def test_forms_follow_the_steps() -> None:
    forms = F()
    for kind in ("prune", "finalize", "factorize", "quantize", "convert"):
        forms = orders.after(forms, kind)
    assert forms == {"factorized", "converted"}
    assert orders.after(F({"factorized"}), "merge_lowrank") == F()
    assert orders.after(F({"masked"}), "evaluate") == {"masked"}


@pytest.mark.parametrize(
    ("forms", "kind", "says"),
    [
        ({"fake_quant"}, "prune", "prune before quantize"),
        ({"converted"}, "factorize", "factorize before quantize"),
        ({"masked"}, "quantize", "call finalize first"),
        ({"masked"}, "prepare_qat", "call finalize first"),
        ({"kmeans"}, "quantize", "already quantized (kmeans)"),
        ({"qat"}, "fuse", "fuse before prepare_qat"),
        ({"converted"}, "finetune", "fine-tune before convert"),
        (set(), "convert", "call quantize or prepare_qat first"),
        (set(), "finalize", "call prune first"),
        (set(), "merge_lowrank", "call factorize first"),
    ],
)
def test_impossible_orders_say_what_to_call_first(forms, kind, says) -> None:
    why = orders.check_step(F(forms), kind)
    assert why is not None and says in why


@pytest.mark.parametrize(
    ("forms", "kind"),
    [
        (set(), "prune"),
        ({"masked"}, "prune"),  # re-pruning
        ({"masked"}, "factorize"),
        ({"factorized"}, "quantize"),
        ({"fake_quant"}, "convert"),
        ({"qat"}, "convert"),
        ({"qat"}, "finetune"),
        ({"fake_quant"}, "fuse"),
        ({"converted"}, "evaluate"),
    ],
)
def test_admissible_orders_pass(forms, kind) -> None:
    assert orders.check_step(F(forms), kind) is None
    assert orders.check_step(None, kind) is None  # unknown forms: nothing is checked


VERBS = {
    "prune": lambda m: tc.prune(m, tc.PruneConfig(sparsity=0.5)),
    "quantize": lambda m: tc.quantize(m, tc.QuantConfig(), calib_data=[torch.randn(4, 3, 8, 8)]),
    "factorize": lambda m: tc.factorize(m, tc.LowRankConfig(rank=0.5)),
    "finalize": lambda m: tc.finalize(m),
    "convert": lambda m: tc.convert(m),
    "merge_lowrank": lambda m: tc.merge_lowrank(m),
}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("quantize", "prune"),
        ("quantize", "factorize"),
        ("prune", "convert"),
        ("factorize", "finalize"),
        ("prune", "merge_lowrank"),
    ],
)
def test_the_table_matches_what_the_verbs_refuse(first: str, second: str) -> None:
    """Every order the table forbids is one the verbs refuse today (so the table is not stricter
    than the library for these pairs)."""
    forms = orders.after(F(), first)
    assert orders.check_step(forms, second) is not None
    torch.manual_seed(0)
    m = TinyCNN().eval()
    VERBS[first](m)
    with pytest.raises(tc.errors.TorchCompressError):
        VERBS[second](copy.deepcopy(m))
