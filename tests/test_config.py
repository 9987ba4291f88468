"""torchcompress.config.Config: validation, strict dict round-trips, replace."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from torchcompress.config import Config
from torchcompress.errors import ConfigError, check_range


@dataclass(frozen=True)
class Spec(Config):
    bits: int = 8
    symmetric: bool = True
    group: tuple[int, ...] | None = None

    def validate(self) -> None:
        check_range("bits", self.bits, 2, 16, owner="Spec")


@dataclass(frozen=True)
class Outer(Config):
    weight: Spec | None = None
    extra: tuple[Spec, ...] = ()
    by_name: dict = field(default_factory=dict)
    name: str = "x"


def test_round_trip_plain_and_nested():
    s = Spec(bits=4, group=(1, 2))
    d = s.to_dict()
    assert d == {"bits": 4, "symmetric": True, "group": [1, 2]}
    assert Spec.from_dict(d) == s and isinstance(Spec.from_dict(d).group, tuple)
    o = Outer(weight=Spec(4), extra=(Spec(2), Spec(3)), by_name={"fc": Spec(6)}, name="y")
    d = json.loads(json.dumps(o.to_dict()))  # JSON-serialisable
    back = Outer.from_dict(d)
    assert back == o
    assert isinstance(back.extra[0], Spec) and isinstance(back.by_name["fc"], Spec)
    # a nested config given as a plain dict (no "__config__" tag) is rebuilt from the hint
    assert Outer.from_dict({"weight": {"bits": 5}}).weight == Spec(5)
    assert Outer.from_dict({"weight": None}).weight is None
    assert Spec.from_dict(s) is s


def test_strict_keys_and_validation():
    with pytest.raises(ConfigError, match=r"Spec has no field 'bit' .*Did you mean 'bits'\?"):
        Spec.from_dict({"bit": 4})
    with pytest.raises(ConfigError, match=r"Spec.bits=1 is outside \[2, 16\]"):
        Spec.from_dict({"bits": 1})
    with pytest.raises(ConfigError):
        Spec(bits=40)
    with pytest.raises(ConfigError, match="expects a dict"):
        Spec.from_dict([("bits", 4)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Unknown config class 'Nope'"):
        Outer.from_dict({"weight": {"__config__": "Nope"}})


def test_replace_and_frozen():
    s = Spec(bits=8)
    t = s.replace(bits=4)
    assert t.bits == 4 and s.bits == 8
    with pytest.raises(ConfigError, match="Did you mean 'bits'"):
        s.replace(bitz=4)
    with pytest.raises(ConfigError):
        s.replace(bits=1)  # validated again
    with pytest.raises(FrozenInstanceError):
        s.bits = 3  # type: ignore[misc]


def test_configs_defined_inside_a_function():
    @dataclass(frozen=True)
    class Local(Config):
        shape: tuple[int, ...] = (1,)

    @dataclass(frozen=True)
    class Holder(Config):
        inner: Local | None = None  # names a local class: get_type_hints cannot resolve it

    h = Holder(inner=Local(shape=(2, 3)))
    assert Holder.from_dict(h.to_dict()) == h
    assert Local.from_dict({"shape": [4]}).shape == (4,)
