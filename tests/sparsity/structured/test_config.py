"""ChannelPruneConfig: defaults, validation with clear messages, plain-data round trips."""

from __future__ import annotations

import pytest

from torchcompress.errors import ConfigError
from torchcompress.sparsity.structured import ChannelPruneConfig


def test_defaults_and_derived_fields() -> None:
    c = ChannelPruneConfig(ratio=0.3)
    assert (c.criterion, c.scope, c.max_ratio, c.relative_to, c.ignore) == (
        "l2",
        "local",
        0.9,
        "original",
        (),
    )
    assert c.metric is None and c.goal is None and not c.needs_data()
    t = ChannelPruneConfig(target={"params": 0.4}, criterion="taylor", ignore="fc")
    assert (t.metric, t.goal, t.ignore, t.needs_data()) == ("params", 0.4, ("fc",), True)


def test_plain_data_round_trip() -> None:
    c = ChannelPruneConfig(
        target={"macs": 0.5}, round_to=8, ignore=["head", "*.fc"], scope="global"
    )
    d = c.to_dict()
    assert d["target"] == {"macs": 0.5} and d["ignore"] == ["head", "*.fc"]
    assert ChannelPruneConfig.from_dict(d) == c
    assert c.replace(target=None, ratio=0.2).ratio == 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of ratio="),
        ({"ratio": 0.2, "target": {"macs": 0.5}}, "exactly one of ratio="),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": 0.95}, r"ratio=0.95 is above max_ratio=0.9"),
        ({"target": {"macs": 0.5, "params": 0.5}}, "one budget"),
        ({"target": {"latency": 0.5}}, "target metric"),
        ({"target": {"macs": 0.0}}, "target"),
        ({"ratio": 0.2, "criterion": "magic"}, "criterion"),
        ({"ratio": 0.2, "scope": "layer"}, "scope"),
        ({"ratio": 0.2, "round_to": 0}, "round_to must be a positive int"),
        ({"ratio": 0.2, "round_to": True}, "round_to must be a positive int"),
        ({"ratio": 0.2, "ignore": [3]}, "glob patterns"),
        ({"ratio": 0.2, "max_batches": 0}, "max_batches"),
        ({"ratio": 0.2, "relative_to": "first"}, "relative_to"),
    ],
)
def test_validation_names_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        ChannelPruneConfig(**kwargs)
    assert "ChannelPruneConfig" in str(info.value)
