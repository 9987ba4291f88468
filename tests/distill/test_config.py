"""DistillTerm / DistillConfig: typed, normalised, round-tripping through dicts, JSON and YAML."""

from __future__ import annotations

import json

import pytest

from torchcompress.distill import DistillConfig, DistillTerm
from torchcompress.distill.config import as_term
from torchcompress.errors import ConfigError


def test_round_trip_through_dicts_and_json():
    cfg = DistillConfig(
        terms=[
            DistillTerm("kd", 0.9, options={"temperature": 4.0, "alpha": 1.0}),
            ("ce", 0.1),
            DistillTerm("at", 1000.0, student=["layer1", "layer2"], teacher=("t1", "t2")),
            {"loss": "dkd", "warmup_steps": 20, "options": {"beta": 2.0}},
        ],
        cache=True,
    )
    assert cfg.terms[2].student == ("layer1", "layer2")
    d = cfg.to_dict()
    assert DistillConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert DistillConfig.from_dict(d).terms[2].pairs() == [("layer1", "t1"), ("layer2", "t2")]


def test_yaml_style_short_forms():
    yaml = pytest.importorskip("yaml")
    text = """
terms:
  - kd
  - [ce, 0.5]
  - {loss: hint, weight: 100, student: layer2, teacher: layer3}
cache: false
"""
    cfg = DistillConfig.from_dict(yaml.safe_load(text))
    assert [(t.loss, t.weight) for t in cfg.terms] == [("kd", 1.0), ("ce", 0.5), ("hint", 100)]
    assert cfg.terms[2].pairs() == [("layer2", "layer3")]
    assert DistillConfig(terms="kd").terms == (DistillTerm("kd"),)
    assert DistillConfig(terms=("kd", 2)).terms[0].weight == 2


def test_bad_configs():
    with pytest.raises(ConfigError, match="empty"):
        DistillConfig(terms=[])
    with pytest.raises(ConfigError, match="no field 'cached'"):
        DistillConfig.from_dict({"cached": True})
    with pytest.raises(ConfigError, match="cache must be True or False"):
        DistillConfig(cache="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="A distillation term must be"):
        as_term(3)
    with pytest.raises(ConfigError, match="warmup_steps"):
        DistillTerm("kd", warmup_steps=-1)
    with pytest.raises(ConfigError, match="no student module"):
        DistillTerm("kd", teacher="fc")
    with pytest.raises(ConfigError, match="module name"):
        DistillTerm("hint", student=[1, 2])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="must be finite"):
        DistillTerm("kd", weight=float("inf"))
