"""Recipe fuzzing: random and mutated recipes (types swapped, keys dropped or misspelt, values out of
range, steps reordered, duplicated or dropped) never end in a traceback: they run (exit 0) or stop
with one line of error (exit 2)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from torchcompress.cli import main  # noqa: E402
from torchcompress.recipe import STEPS  # noqa: E402

BASE: dict[str, Any] = {
    "seed": 0,
    "latency": False,
    "steps": [
        {"model": "torchcompress.testing:MixedConvNet"},
        {
            "data": {
                "name": "digits",
                "kwargs": {"image_size": 8, "batch_size": 512},
                "calib_batches": 1,
            }
        },
        {"finetune": {"steps": 1, "lr": 0.01}},
    ],
    "variants": [
        {"id": "p", "steps": [{"prune": {"sparsity": 0.5, "scope": "global"}}, "finalize"]},
        {
            "from": "p",
            "steps": ["fuse", {"quantize": {"config": {"observer": "minmax"}}}, "convert"],
        },
        {
            "steps": [
                {"factorize": {"rank": 0.5, "exclude": ["fc"]}},
                {"evaluate": {"max_batches": 1}},
            ]
        },
    ],
}

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([10**9, -(10**9), 0.5, 1.5, -0.5, 2.0, 1e-9, 255]),
    st.text("abcxyz:.*_ ", max_size=6),
    st.lists(st.integers(-2, 9), max_size=3),
    st.dictionaries(
        st.sampled_from(["a", "bits", "rank", "sparsity"]), st.integers(-1, 9), max_size=2
    ),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def _misspell(key: str, pos: int, char: str) -> str:
    pos = pos % (len(key) + 1)
    return key[:pos] + char + key[pos + 1 :] if key else char


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    recipe = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(recipe)[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _get(recipe, path[:-1]), path[-1]
        op = draw(
            st.sampled_from(["replace", "drop", "misspell", "shuffle", "duplicate", "unknown"])
        )
        if op == "replace":
            parent[last] = draw(ODD_VALUES)
        elif op == "drop":
            del parent[last]
        elif op == "misspell" and isinstance(parent, dict) and isinstance(last, str):
            new = _misspell(last, draw(st.integers(0, 20)), draw(st.sampled_from("aez_")))
            parent[new] = parent.pop(last)
        elif op == "shuffle" and isinstance(parent, list):
            parent[:] = draw(st.permutations(parent))
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(parent[last]))
        elif op == "unknown" and isinstance(parent, dict):
            parent[
                draw(st.sampled_from(["bogus", "seed", "steps", "from", "weights", "include"]))
            ] = draw(ODD_VALUES)
    return recipe


@st.composite
def random_recipe(draw: st.DrawFn) -> Any:
    kinds = [k for k in STEPS.names() if not k.startswith("_")] + ["prune_channels", "quantise"]
    steps: list[Any] = list(BASE["steps"][: draw(st.integers(0, 2))])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(kinds))
        body = draw(
            st.one_of(
                st.none(),
                st.dictionaries(
                    st.sampled_from(
                        ["sparsity", "bits", "rank", "epochs", "steps", "path", "config", "method"]
                    ),
                    ODD_VALUES,
                    max_size=2,
                ),
            )
        )
        steps.append(kind if body is None else {kind: body})
    return {"latency": False, "steps": steps}


def _check(recipe: Any, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    capsys.readouterr()
    code = main(["run", str(path), "--out", str(tmp / "out"), "--no-latency"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("torchcompress:")]
    assert "Traceback" not in err
    if code == 0:
        assert not errors, err
    else:
        assert code == 2, f"exit {code}:\n{err}\n{yaml.safe_dump(recipe)}"
        assert len(errors) == 1 and errors[0].startswith("torchcompress: error: "), err
        assert err.rstrip().splitlines()[-1] == errors[0]


FUZZ = settings(
    max_examples=int(os.environ.get("TC_FUZZ_EXAMPLES", "15")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def test_the_base_recipe_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(BASE, tmp_path, capsys)


@pytest.mark.slow
@FUZZ
@given(recipe=mutated())
def test_mutated_recipes_run_or_fail_in_one_line(recipe: Any, tmp_path_factory, capsys) -> None:
    _check(recipe, tmp_path_factory.mktemp("fuzz"), capsys)


@pytest.mark.slow
@FUZZ
@given(recipe=random_recipe())
def test_random_recipes_run_or_fail_in_one_line(recipe: Any, tmp_path_factory, capsys) -> None:
    _check(recipe, tmp_path_factory.mktemp("fuzz"), capsys)
