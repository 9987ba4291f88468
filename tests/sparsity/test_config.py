"""PruneConfig: defaults, validation and round trips."""

from __future__ import annotations

import pytest

import torchcompress as tc
from torchcompress.errors import ConfigError


def test_defaults_and_target_sparsity() -> None:
    assert tc.PruneConfig().target_sparsity == 0.5
    assert tc.PruneConfig(pattern="n:m", n=1, m=4).target_sparsity == 0.75
    assert tc.PruneConfig(sparsity=0.9).target_sparsity == 0.9
    assert tc.PruneConfig(pattern="n:m", n=2, m=4, sparsity=0.25).target_sparsity == 0.25


def test_nm_shorthand() -> None:
    c = tc.PruneConfig(pattern="4:8")
    assert (c.pattern, c.n, c.m, c.target_sparsity) == ("n:m", 4, 8, 0.5)


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_range(s: float) -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        tc.PruneConfig(sparsity=s)


def test_n_greater_than_m() -> None:
    with pytest.raises(ConfigError, match="n must be smaller than m"):
        tc.PruneConfig(pattern="n:m", n=5, m=4)
    with pytest.raises(ConfigError, match="prunes nothing"):
        tc.PruneConfig(pattern="4:4")


def test_nm_sparsity_above_reach() -> None:
    with pytest.raises(ConfigError, match="above what 2:4 can reach"):
        tc.PruneConfig(pattern="2:4", sparsity=0.7)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pattern", "blocky"),
        ("criterion", "magnitud"),
        ("scope", "world"),
        ("normalize", "z"),
        ("max_batches", 0),
        ("regrow", "yes"),
    ],
)
def test_bad_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        tc.PruneConfig(**{field: value})


def test_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'magnitude'"):
        tc.PruneConfig(criterion="magnitud")


def test_output_scope_unstructured_only() -> None:
    with pytest.raises(ConfigError, match="scope='output'"):
        tc.PruneConfig(scope="output", pattern="channel")


def test_min_density_conflict() -> None:
    with pytest.raises(ConfigError, match="min_density"):
        tc.PruneConfig(sparsity=0.9, scope="global", min_density=0.2)


def test_round_trip() -> None:
    c = tc.PruneConfig(sparsity=0.3, pattern="2:4", criterion="wanda", scope="global", seed=3)
    assert tc.PruneConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="no field"):
        tc.PruneConfig.from_dict({"sparsty": 0.5})
    assert c.describe() == "30% 2:4, wanda, global"
