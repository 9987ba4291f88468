"""The prune_channels step: one-to-one with tc.prune_channels, its labels, its place in the orders."""

from __future__ import annotations

import pytest
import torch

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.recipe import PLANNED, PruneChannelsStep, dumps, loads, run
from torchcompress.testing import MixedConvNet

from .conftest import HEAD


def test_a_prune_channels_step_does_what_the_python_call_does() -> None:
    result = run(loads(HEAD + "  - prune_channels: {ratio: 0.5, round_to: 2}\n"))
    assert "prune_channels" not in PLANNED
    tc.seed_everything(0)
    model = MixedConvNet().eval()
    train, test = tc.data.digits(image_size=8, batch_size=256)
    x = next(iter(test))[0]
    calib = [b for b, _ in zip(train, range(2))]
    before = sum(p.numel() for p in model.parameters())
    tc.prune_channels(model, x[:1], tc.ChannelPruneConfig(ratio=0.5, round_to=2), data=calib)
    after = sum(p.numel() for p in model.parameters())
    pruned = result.branches[-1].model
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    record = result.branches[-1].steps[-1]
    assert record.figures == {"params_before": before, "params_after": after} and after < before
    base, row = result.rows()
    assert row["params"] == after < base["params"] and row["macs"] < base["macs"]


def test_labels_round_trip_and_orders() -> None:
    r = loads(HEAD + "  - prune_channels: {target: {macs: 0.5}, criterion: wanda}\n")
    step = r.steps[-1]
    assert isinstance(step, PruneChannelsStep)
    assert step.label() == "channels pruned to 50% macs (wanda, local)"
    assert loads(dumps(r)).steps == r.steps
    with pytest.raises(ConfigError, match=r"give exactly one of ratio= .* and target="):
        loads(HEAD + "  - prune_channels: {criterion: l1}\n")
    with pytest.raises(ConfigError, match=r"steps\[3\] \(prune_channels\): the model is already"):
        loads(HEAD + "  - quantize: {}\n  - prune_channels: {ratio: 0.3}\n")
    # the pruned model is plain and dense: every family composes after it
    loads(HEAD + "  - prune_channels: {ratio: 0.3}\n  - quantize: {}\n  - convert\n")
