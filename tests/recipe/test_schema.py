"""Typed fields from recipe data: keys, types, nested configs, values, and where the error is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

import torchcompress as tc
from torchcompress.config import Config
from torchcompress.errors import ConfigError
from torchcompress.recipe.schema import Where, check_value, parse_config, plain


@dataclass(frozen=True)
class Inner(Config):
    bits: int = 8
    name: str = "x"


@dataclass(frozen=True)
class Outer(Config):
    rate: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    shape: tuple[int, ...] | None = None
    pair: tuple[int, str] = (1, "x")
    table: dict[str, int] = field(default_factory=dict)
    inner: Inner | None = None
    anything: Any = None

    def validate(self) -> None:
        tc.errors.check_range("rate", self.rate, 0, 1, owner="Outer")


def test_where_prints_the_path() -> None:
    w = Where("r.yaml") / "variants" / 2 / "steps" / 0 / "config"
    assert str(w) == "r.yaml: variants[2].steps[0].config"
    assert str(Where("r.yaml")) == "r.yaml"
    assert str(w.error("bad")) == "r.yaml: variants[2].steps[0].config: bad"


def test_values_of_the_right_type_pass_and_lists_become_tuples() -> None:
    o = parse_config(
        Outer,
        {
            "rate": 1,  # an int is a number
            "flag": True,
            "mode": "b",
            "shape": [1, 3, 8, 8],
            "pair": [2, "y"],
            "table": {"a": 1},
            "inner": {"bits": 4},
            "anything": {"whatever": [1]},
        },
        Where("r.yaml"),
    )
    assert o == Outer(
        1, True, "b", (1, 3, 8, 8), (2, "y"), {"a": 1}, Inner(bits=4), {"whatever": [1]}
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rat": 0.1}, "r.yaml: unknown key 'rat' (Outer fields: rate, flag,"),
        ({"rat": 0.1}, "Did you mean 'rate'?"),
        ({"rate": "high"}, "r.yaml: rate: expected a number, got a string ('high')."),
        ({"rate": True}, "rate: expected a number, got a boolean (True)."),
        ({"rate": float("nan")}, "rate: expected a finite number"),
        ({"rate": 2.0}, "r.yaml: Outer.rate=2.0 is outside [0, 1]."),
        ({"flag": "yes"}, "flag: expected true or false, got a string ('yes')."),
        ({"mode": "c"}, "mode: expected one of 'a', 'b', got a string ('c')."),
        ({"shape": [1, "a"]}, "shape[1]: expected an integer, got a string ('a')."),
        ({"shape": 3}, "shape: expected a list, got an integer (3)."),
        ({"pair": [1]}, "pair: expected a list of 2 items, got 1."),
        ({"table": [1]}, "table: expected a mapping, got a list ([1])."),
        ({"table": {"a": "1"}}, "table.a: expected an integer"),
        (
            {"inner": {"bitz": 4}},
            "r.yaml: inner: unknown key 'bitz' (Inner fields: bits, name). Did you mean 'bits'?",
        ),
        ({"inner": 4}, "inner: expected a mapping of Inner fields, got an integer (4)."),
        ([1, 2], "r.yaml: expected a mapping of Outer fields, got a list ([1, 2])."),
    ],
)
def test_errors_name_the_place_the_key_and_what_is_expected(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(Outer, data, Where("r.yaml"))
    assert message in str(e.value)


def test_family_configs_parse_from_recipe_data_into_the_same_objects() -> None:
    w = Where("r.yaml")
    q = parse_config(
        tc.QuantConfig,
        {"weight": {"bits": 4, "granularity": "channel"}, "activation": None, "observer": "mse"},
        w,
    )
    assert q == tc.QuantConfig(
        weight=tc.IntSpec(4, granularity="channel"), activation=None, observer="mse"
    )
    assert parse_config(tc.PruneConfig, {"sparsity": 0.5, "pattern": "n:m"}, w) == tc.PruneConfig(
        sparsity=0.5, pattern="n:m"
    )
    assert parse_config(tc.LowRankConfig, {"rank": "auto", "budget": 0.5}, w).budget == 0.5
    # the family's own validation, located
    with pytest.raises(ConfigError, match=r"^r.yaml: .*budget"):
        parse_config(tc.LowRankConfig, {"rank": "auto"}, w)
    with pytest.raises(ConfigError, match=r"^r.yaml: weight.bits: expected an integer"):
        parse_config(tc.QuantConfig, {"weight": {"bits": "8"}}, w)


def test_plain_leaves_defaults_out_and_round_trips() -> None:
    q = tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), observer="percentile")
    data = plain(q)
    assert data == {"weight": {"bits": 4, "granularity": "channel"}, "observer": "percentile"}
    assert parse_config(tc.QuantConfig, data, Where()) == q
    full = plain(q, defaults=True)
    assert full["mode"] == "static" and full["weight"]["granularity"] == "channel"


def test_check_value_accepts_anything_for_unevaluated_hints() -> None:
    assert check_value({"a": 1}, "SomeName", Where()) == {"a": 1}


def test_registered_kinds_are_spelt_by_name_and_round_trip() -> None:
    import torchcompress as tc
    from torchcompress.recipe import QuantizeStep, dumps, loads
    from torchcompress.recipe.schema import kinds_of

    assert {"minmax", "percentile", "mse", "kl"} <= set(kinds_of(tc.quant.ObserverSpec))
    assert kinds_of(tc.IntSpec) == {}
    head = "steps:\n  - model: resnet20\n  - quantize: {config: "
    cfg = loads(head + "{observer: {name: percentile, percentile: 99.9}, weight_observer: mse}}\n")
    q = cfg.steps[1].config
    assert q == tc.QuantConfig(observer=tc.quant.Percentile(99.9), weight_observer="mse")
    # the config's own shorthand options are keys too
    short = loads(head + "{observer: percentile, percentile: 99.9}}\n").steps[1].config
    assert short.observer == tc.quant.Percentile(99.9)
    for one in (
        q,
        short,
        tc.QuantConfig(),
        tc.QuantConfig(observer=tc.quant.MovingMinMax(0.5), mode="static"),
    ):
        text = dumps([QuantizeStep(one)])
        assert loads(text, check=False).steps[0].config == one, text
    assert "observer" not in dumps([QuantizeStep(tc.QuantConfig())])  # the default is left out
    with pytest.raises(
        ConfigError, match=r"config.observer: unknown ObserverSpec name 'percentil'"
    ):
        loads(head + "{observer: {name: percentil}}}\n")
    with pytest.raises(ConfigError, match="ObserverSpec needs 'name:'"):
        loads(head + "{observer: {percentile: 99.0}}}\n")
    with pytest.raises(ConfigError, match="sets 'percentile' itself"):
        loads(head + "{observer: {name: percentile, percentile: 99.0}, percentile: 98.0}}\n")
