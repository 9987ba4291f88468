"""Every (form, verb) pair of the table in torchcompress.forms, on a small CNN.

For each form a layer can be in (made by its verb) and each verb: a blocked pair is a
CompressionStateError that changes nothing; an admissible pair runs and keeps what the earlier
step bought (a mask's zeros stay zeros, counted by tc.profile; a factorized layer stays
factorized), and an exact step (finalize, fuse, merge_lowrank, convert) keeps the outputs.
The pairs are read from the registry, so a new form or verb is tested here without an edit, once
it has a producer and an applier below.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress import forms
from torchcompress.errors import CompressionStateError
from torchcompress.testing import TinyCNN, assert_unchanged

Step = Callable[[nn.Module, list], nn.Module]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    m = TinyCNN().eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m


X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
CALIB = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
Q = tc.QuantConfig

#: how to bring a model's layers into each form (with the verb that makes it)
PRODUCERS: dict[str, Step] = {
    "dense": lambda m, d: m,
    "masked": lambda m, d: tc.prune(m, tc.PruneConfig(sparsity=0.5)),
    "fake-quant": lambda m, d: tc.quantize(m, Q(), d),
    "qat": lambda m, d: tc.prepare_qat(m, Q(), "ste", d),
    "converted": lambda m, d: tc.convert(tc.quantize(m, Q(), d)),
    "kmeans": lambda m, d: tc.kmeans_quantize(m, bits=4),
    "factorized": lambda m, d: tc.factorize(m, tc.LowRankConfig(rank=2), include=["conv2", "fc"]),
    "channel-pruned": lambda m, d: tc.prune_channels(m, X, 0.25),
}
#: how to apply each verb
APPLIERS: dict[str, Step] = {
    "prune": lambda m, d: tc.prune(m, tc.PruneConfig(sparsity=0.7)),
    "finalize": lambda m, d: tc.finalize(m),
    "quantize": lambda m, d: tc.quantize(m, Q(), d),
    "prepare_qat": lambda m, d: tc.prepare_qat(m, Q(), "ste", d),
    "convert": lambda m, d: tc.convert(m),
    "kmeans_quantize": lambda m, d: tc.kmeans_quantize(m, bits=4),
    "factorize": lambda m, d: tc.factorize(m, tc.LowRankConfig(rank=2)),
    "merge_lowrank": lambda m, d: tc.merge_lowrank(m),
    "fuse": lambda m, d: tc.fuse(m),
    "prune_channels": lambda m, d: tc.prune_channels(m, X, 0.25),
}
#: verbs that compute the same function (up to float rounding or one quantization step)
EXACT = {"finalize": 1e-5, "fuse": 1e-4, "merge_lowrank": 1e-4, "convert": 0.05}

#: forms whose producer above reaches every layer of the CNN
WHOLE = {"fake-quant", "qat", "converted", "kmeans"}

PAIRS = [(f, v) for f in forms.FORMS.names() for v in forms.VERBS.names()]


def _has_bn(m: nn.Module) -> bool:
    """A BatchNorm of its own (not one folded inside a QAT layer) is left in ``m``."""
    inside = tuple(n + "." for n in forms.layer_forms(m))
    return any(
        isinstance(mod, nn.modules.batchnorm._BatchNorm) and not name.startswith(inside)
        for name, mod in m.named_modules()
    )


def _zeros(m: nn.Module) -> dict[str, int]:
    """Weight zeros per layer, as tc.profile counts them (params - non-zeros)."""
    prof = tc.profile(m, X)
    return {r.name: r.params - r.nonzero_params for r in prof.rows if r.params}


@pytest.mark.parametrize(("form", "verb"), PAIRS, ids=[f"{f}->{v}" for f, v in PAIRS])
def test_pair(form: str, verb: str) -> None:
    if form not in PRODUCERS or verb not in APPLIERS:
        pytest.skip(f"no producer of {form!r} or applier of {verb!r} yet")
    model = PRODUCERS[form](cnn(), CALIB).eval()
    found = forms.layer_forms(model)
    assert set().union(*found.values()) == ({form} if form != "dense" else set()), found
    rule = forms.rule(form, verb)
    v = forms.VERBS.get(verb)
    with torch.no_grad():
        before = model(X)
    zeros = {n: z for n, z in _zeros(model).items() if n in found} if form == "masked" else {}
    if (v.acts_on is not None and form not in v.acts_on) or (form == v.makes and form in WHOLE):
        # the verb leaves such layers as they are (or they are already in its form, and the
        # producer left no other layer): nothing to do is its own clear error
        with assert_unchanged(model), pytest.raises(CompressionStateError, match="tc\\."):
            APPLIERS[verb](model, CALIB)
        return
    if not rule.allowed and not (verb == "fuse" and not _has_bn(model)):
        # (tc.fuse reaches only the layers that feed a BatchNorm: with none left it has no work)
        with assert_unchanged(model), pytest.raises(CompressionStateError, match=form):
            APPLIERS[verb](model, CALIB)
        return
    out = APPLIERS[verb](model, CALIB).eval()
    with torch.no_grad():
        after = out(X)
    assert after.shape == before.shape and bool(torch.isfinite(after).all())
    scale = float(before.abs().max())
    err = float((after - before).abs().max())
    assert err <= EXACT.get(verb, 1.0) * scale, (err, scale)
    kept = set().union(*forms.layer_forms(out).values()) if forms.layer_forms(out) else set()
    if form == "factorized" and verb != "merge_lowrank":
        assert "factorized" in kept
    if zeros and verb not in ("factorize",):
        # what pruning bought: every zero of a masked layer is still a zero
        now = _zeros(out)
        for name, n in zeros.items():
            assert now.get(name, 0) >= n, (name, n, now.get(name))
