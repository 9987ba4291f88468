"""Models and data named in recipes: names, factories with arguments, Hugging Face folders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.errors import ConfigError
from torchcompress.recipe import specs


def test_parse_call_reads_literal_arguments() -> None:
    assert specs.parse_call("torch.nn:Linear(8, 2, bias=False)") == (
        "torch.nn:Linear",
        (8, 2),
        {"bias": False},
    )
    assert specs.parse_call(" resnet20 ") == ("resnet20", (), {})
    assert specs.parse_call("f(shape=[1, 2], name='a', x=None)") == (
        "f",
        (),
        {"shape": [1, 2], "name": "a", "x": None},
    )
    for bad in ("f(1, g(2))", "f(x=os.sep)", "f(*a)", "f(1"):
        with pytest.raises(ConfigError, match=r"arguments"):
            specs.parse_call(bad)


def test_models_by_name_factory_and_arguments() -> None:
    torch.manual_seed(0)
    m = specs.build_model("name", "resnet20", (), {"num_classes": 4}).model
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 4) and not m.training
    lin = specs.build_model("factory", "torch.nn:Linear", (8, 2), {"bias": False}).model
    assert isinstance(lin, nn.Linear) and lin.bias is None and lin.in_features == 8


@pytest.mark.parametrize(
    ("kind", "target", "args", "kwargs", "message"),
    [
        ("name", "resnet21", (), {}, "Unknown model 'resnet21'; tc.models has: resnet20"),
        ("name", "resnt20", (), {}, "Did you mean 'resnet20'"),
        (
            "name",
            "resnet20",
            (),
            {"num_klasses": 4},
            "resnet20: got an unexpected keyword argument 'num_klasses'",
        ),
        (
            "factory",
            "torch.nn:Linear",
            (),
            {},
            "torch.nn:Linear: missing a required argument: 'in_features'",
        ),
        ("factory", "torch.nn:Linear", (), {}, "it needs in_features, out_features"),
        (
            "factory",
            "no_such_pkg.models:build",
            (),
            {},
            "module 'no_such_pkg.models' does not import",
        ),
        (
            "factory",
            "torch.nn:Linaer",
            (),
            {},
            "'torch.nn' has no attribute 'Linaer'. Did you mean 'Linear'",
        ),
        ("factory", "torch.nn", (), {}, "must look like 'package.module:name'"),
        ("factory", "torch:__version__", (), {}, "not something to call"),
        ("hf", "/no/such/folder", (), {}, "hf:/no/such/folder: no such folder"),
    ],
)
def test_model_spec_errors_name_what_is_wrong(kind, target, args, kwargs, message) -> None:
    with pytest.raises(ConfigError) as e:
        specs.check_model(kind, target, args, kwargs)
    assert message in str(e.value)


def test_a_factory_that_raises_or_returns_no_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"raised RuntimeError when built: .*negative dimension"):
        specs.build_model("factory", "torch.nn:Linear", (-1, 2), {})
    with pytest.raises(ConfigError, match=r"returned a Tensor, not an nn.Module"):
        specs.build_model("factory", "torch:zeros", (2,), {})


def test_hf_folder_missing_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"has no config.json"):
        specs.check_model("hf", str(tmp_path), (), {})


def test_data_sets_and_factories() -> None:
    d = specs.build_data("name", "digits", (), {"image_size": 8, "batch_size": 500})
    x, _ = next(iter(d.test))
    assert x.shape[1:] == (3, 8, 8) and d.labelled and "1347 train / 450 test" in d.description
    assert specs.check_data("name", "sentences", (), {}) is False
    with pytest.raises(ConfigError, match=r"Unknown data set 'digit'.*Did you mean 'digits'"):
        specs.check_data("name", "digit", (), {})
    with pytest.raises(ConfigError, match=r"digits: got an unexpected keyword argument 'img_size'"):
        specs.check_data("name", "digits", (), {"img_size": 8})
    with pytest.raises(ConfigError, match=r"needs a tokenizer"):
        specs.build_data("name", "sentences", (), {})
    # a factory returning (train, test), one iterable, or a mapping
    pair = specs._bundle(([1], [2]), "f")
    assert (pair.train, pair.test) == ([1], [2])
    one = specs._bundle([torch.zeros(2, 3)], "f")
    assert one.train is one.test and "evaluation uses the training data" in one.notes[0]
    mapping = specs._bundle({"train": [1], "calib": [3]}, "f")
    assert mapping.calib == [3] and mapping.test == [1]
    with pytest.raises(ConfigError, match=r"expected 'train'"):
        specs._bundle({"test": [1]}, "f")
    with pytest.raises(ConfigError, match=r"returned a int, not batches"):
        specs._bundle(3, "f")


def test_slice_and_repeat_batches_of_every_kind() -> None:
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    b = specs.slice_batch((x, y), 2)
    assert torch.equal(b.args[0], x[:2]) and torch.equal(b.target, y[:2])
    r = specs.repeat_batch(b, 5)
    assert torch.equal(r.args[0], torch.cat([x[:2]] * 3)[:5])
    kw = specs.slice_batch({"input_ids": torch.ones(4, 7, dtype=torch.long), "labels": y[:4]}, 1)
    assert kw.kwargs["input_ids"].shape == (1, 7) and kw.target.shape == (1,)
    assert isinstance(specs.batch_inputs(kw), dict)
    assert specs.batch_inputs(Batch(args=(x,))) is x
    assert isinstance(specs.batch_inputs(Batch(args=(x, x))), tuple)


def test_tc_models_names_all_check() -> None:
    for name in tc.models.names():
        specs.check_model("name", name, (), {})
