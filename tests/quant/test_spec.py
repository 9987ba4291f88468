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


def test_observer_specs_and_the_keyword_shorthand() -> None:
    cfg = tc.QuantConfig(observer="percentile", percentile=99.9, bins=512, weight_observer="mse")
    assert cfg.observer == tc.quant.Percentile(99.9, bins=512)
    assert cfg.weight_observer == tc.quant.MSE(bins=512)  # bins goes to every observer taking it
    assert cfg == tc.QuantConfig(
        observer=tc.quant.Percentile(99.9, 512), weight_observer=tc.quant.MSE(512)
    )
    assert tc.QuantConfig().observer == tc.quant.MinMax()  # a name is stored as its spec
    assert (cfg.observer_name, cfg.weight_observer_name) == ("percentile", "mse")
    d = cfg.to_dict()
    assert d["observer"] == {"__config__": "Percentile", "percentile": 99.9, "bins": 512}
    assert "percentile" not in d and tc.QuantConfig.from_dict(d) == cfg
    assert cfg.replace(percentile=99.0).observer == tc.quant.Percentile(99.0, bins=512)
    assert cfg.replace(mode="dynamic").observer == cfg.observer


def test_shorthand_options_are_never_silently_ignored() -> None:
    with pytest.raises(ConfigError, match="'averaging_constant' is an option of 'moving_minmax'"):
        tc.QuantConfig(averaging_constant=0.1)  # minmax takes no averaging constant
    with pytest.raises(ConfigError, match="sets 'percentile' itself"):
        tc.QuantConfig(observer=tc.quant.Percentile(99.0), percentile=99.9)
    with pytest.raises(ConfigError, match=r"Percentile\.percentile"):
        tc.QuantConfig(observer="percentile", percentile=101)
    with pytest.raises(ConfigError, match="bins"):
        tc.quant.KL(bins=8)
    with pytest.raises(ConfigError, match="observer name or an ObserverSpec"):
        tc.QuantConfig(observer=3)  # type: ignore[arg-type]


def test_configs_saved_before_observer_specs_load() -> None:
    old = {
        "weight": {"__config__": "IntSpec", **tc.IntSpec(8, granularity="channel").to_dict()},
        "activation": None,
        "observer": "kl",
        "weight_observer": "percentile",
        "mode": "static",
        "percentile": 99.9,
        "averaging_constant": 0.01,
        "bins": 512,
        "reduce_range": "auto",
    }
    cfg = tc.QuantConfig.from_dict(old)
    assert cfg.observer == tc.quant.KL(bins=512)
    assert cfg.weight_observer == tc.quant.Percentile(99.9, bins=512)
    with pytest.raises(ConfigError, match="entropy"):
        tc.QuantConfig.from_dict({**old, "observer": "entropy"})
