"""torchcompress.batches: every accepted batch form, empty data, and batches that do not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchcompress.batches import (
    Batch,
    as_batch,
    batch_size,
    count_batches,
    describe_inputs,
    example_batch,
    iter_batches,
    run_model,
)
from torchcompress.errors import DataError, NumericalError


def test_tensor_batch_and_bare_tensor_is_one_batch():
    x = torch.randn(4, 3)
    b = as_batch(x)
    assert b.args == (x,) and b.kwargs == {} and b.target is None
    assert len(list(iter_batches(x))) == 1  # not 4 rows
    assert len(list(iter_batches([x, x]))) == 2


def test_tuple_and_list_batches():
    x, y = torch.randn(4, 3), torch.arange(4)
    for raw in ((x, y), [x, y], (x, y, torch.zeros(4))):
        b = as_batch(raw)
        assert b.args[0] is x and b.target is y
    assert as_batch((x,)).target is None
    # a DataLoader over a TensorDataset yields lists
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    bs = list(iter_batches(loader))
    assert [batch_size(b) for b in bs] == [3, 1] and torch.equal(bs[1].target, y[3:])


def test_nested_tuple_inputs_become_positional_args():
    a, b_, y = torch.randn(2, 3), torch.randn(2, 5), torch.tensor([0, 1])
    b = as_batch(((a, b_), y))
    assert b.args == (a, b_) and b.target is y

    class Two(nn.Module):
        def forward(self, p, q):
            return p.sum(1) + q.sum(1)

    assert torch.allclose(run_model(Two(), b), a.sum(1) + b_.sum(1))
    with pytest.raises(DataError, match="first element of the tuple should be the model input"):
        as_batch((("text", a), y))


def test_dict_batches_and_labels():
    ids, mask, labels = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), torch.tensor([1, 0])
    b = as_batch({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert set(b.kwargs) == {"input_ids", "attention_mask"} and b.target is labels
    kept = as_batch({"input_ids": ids, "labels": labels}, pass_labels=True)
    assert "labels" in kept.kwargs and kept.target is labels
    assert as_batch({"input_ids": ids, "label": labels}).target is labels
    # (dict of inputs, target)
    b2 = as_batch(({"input_ids": ids}, labels))
    assert b2.kwargs == {"input_ids": ids} and b2.target is labels
    assert batch_size(b) == 2
    assert len(list(iter_batches({"input_ids": ids}))) == 1  # a bare dict is one batch


def test_bad_batches_and_empty_data():
    with pytest.raises(DataError, match="Batch 3 is an empty tuple"):
        as_batch((), index=3)
    with pytest.raises(DataError, match="Batch 0 is a str"):
        list(iter_batches(["text"]))
    with pytest.raises(DataError, match="calib_data yielded no batch"):
        list(iter_batches([], what="calib_data"))
    with pytest.raises(DataError, match="calib_data is None"):
        list(iter_batches(None, what="calib_data"))
    with pytest.raises(DataError, match="must be a tensor, a dict or an iterable"):
        list(iter_batches(42))

    def empty():
        yield from ()

    with pytest.raises(DataError, match="yielded no batch"):
        list(iter_batches(empty()))


def test_max_batches_device_and_counts():
    data = [torch.randn(2, 3) for _ in range(5)]
    assert len(list(iter_batches(data, max_batches=2))) == 2
    b = next(iter(iter_batches([(torch.randn(2, 3), [torch.zeros(1)])], device="cpu")))
    assert b.args[0].device.type == "cpu" and isinstance(b.target, list)
    assert count_batches(data) == 5 and count_batches(torch.zeros(3)) == 1
    assert count_batches(iter(data)) is None
    assert batch_size(Batch()) == 1


def test_run_model_names_the_batch():
    model = nn.Linear(3, 2)
    good = as_batch(torch.randn(4, 3))
    assert run_model(model, good).shape == (4, 2)
    with pytest.raises(
        DataError, match=r"Batch 7 of calib_data does not fit Linear \(inputs \[\(4, 5\)\]"
    ):
        run_model(model, as_batch(torch.randn(4, 5)), index=7, what="calib_data")

    class Checks(nn.Module):
        def forward(self, x):
            raise NumericalError("NaN in layer x")

    with pytest.raises(NumericalError):  # torchcompress errors pass through unchanged
        run_model(Checks(), good)


def test_example_batch_follows_the_model():
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3)
    b = example_batch(model, x)
    assert b.args[0].dtype == torch.float64 and torch.equal(b.args[0], x.double())
    ids = torch.tensor([[1, 2]])
    b = example_batch(model, {"x": x, "ids": ids})
    assert b.kwargs["x"].dtype == torch.float64 and b.kwargs["ids"].dtype == torch.int64
    b = example_batch(model, (x, torch.zeros(2)))  # a tuple: positional inputs
    assert len(b.args) == 2
    b = example_batch(model, [x, torch.zeros(4)])  # a list: a DataLoader batch (inputs, target)
    assert len(b.args) == 1 and b.target is not None
    mixed = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3).half())  # no single dtype: kept
    assert example_batch(mixed, x).args[0].dtype == torch.float32
    with pytest.raises(DataError):
        example_batch(model, "text")


def test_describe_inputs():
    x = torch.zeros(1, 3, 8, 8)
    assert describe_inputs((x,), {}) == "(1, 3, 8, 8)"
    assert describe_inputs((), {}) == "no inputs"
    text = describe_inputs(([x, x], 3), {"mask": torch.ones(1, 8), "flag": None})
    assert text == "[(1, 3, 8, 8), (1, 3, 8, 8)], int, mask=(1, 8), flag=NoneType"


def test_docstring_examples():
    import doctest

    import torchcompress.batches as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
