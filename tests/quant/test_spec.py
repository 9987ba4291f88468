"""IntSpec / QuantConfig validation and round trips."""

from __future__ import annotations

import pytest

import torchcompress as tc
from torchcompress.errors import ConfigError


@pytest.mark.parametrize("bits", [1, 9, 12, 32, 0])
def test_bits_out_of_range(bits: int) -> None:
    with pytest.raises(ConfigError, match="bits"):
        tc.IntSpec(bits=bits)


def test_valid_bits() -> None:
    for b in [2, 3, 4, 5, 6, 7, 8, 16]:
        s = tc.IntSpec(bits=b, signed=False)
        assert (s.qmin, s.qmax) == (0, 2**b - 1)
        s = tc.IntSpec(bits=b)
        assert (s.qmin, s.qmax) == (-(2 ** (b - 1)), 2 ** (b - 1) - 1)


def test_group_size_rules() -> None:
    with pytest.raises(ConfigError, match="group_size"):
        tc.IntSpec(4, granularity="group")
    with pytest.raises(ConfigError, match="only applies"):
        tc.IntSpec(4, group_size=32)
    with pytest.raises(ConfigError):
        tc.IntSpec(4, granularity="group", group_size=0)
    with pytest.raises(ConfigError, match="granularity"):
        tc.IntSpec(granularity="row")


def test_quant_config_validation() -> None:
    with pytest.raises(ConfigError, match="neither"):
        tc.QuantConfig(weight=None, activation=None)
    with pytest.raises(ConfigError, match="token"):
        tc.QuantConfig(activation=tc.IntSpec(8, granularity="token"))  # static per-token
    with pytest.raises(ConfigError, match="kernel"):
        tc.QuantConfig(activation=tc.IntSpec(8, granularity="channel"))
    with pytest.raises(ConfigError, match="token"):
        tc.QuantConfig(weight=tc.IntSpec(8, granularity="token"))
    with pytest.raises(ConfigError, match="observer"):
        tc.QuantConfig(observer="entropy")
    with pytest.raises(ConfigError, match="percentile"):
        tc.QuantConfig(percentile=0)
    with pytest.raises(ConfigError, match="mode"):
        tc.QuantConfig(mode="online")
    with pytest.raises(ConfigError, match="reduce_range"):
        tc.QuantConfig(reduce_range="yes")


def test_round_trip() -> None:
    cfg = tc.QuantConfig(
        weight=tc.IntSpec(4, granularity="group", group_size=32),
        activation=tc.IntSpec(8, granularity="token"),
        mode="dynamic",
        observer="mse",
    )
    assert tc.QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert tc.QuantConfig.from_dict(tc.QuantConfig(activation=None).to_dict()).activation is None
    assert cfg.weight_observer_name == "mse"
    assert tc.QuantConfig(weight_observer="minmax", observer="kl").weight_observer_name == "minmax"
