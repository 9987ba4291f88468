"""Reading, checking and writing recipes: every error names the file, the step and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.recipe import PLANNED, STEPS, dumps, load, loads

from .conftest import HEAD, MODEL

EVERY_STEP = (
    HEAD
    + """
  - finetune: {steps: 2, lr: 0.02, optimizer: adamw, scheduler: null, eval: true}
  - evaluate: {topk: [1, 3]}
  - profile: {depth: 1, batch_size: 2, include: "conv*"}
variants:
  - id: pruned
    steps:
      - prune: {config: {sparsity: 0.5, criterion: l1, pattern: channel}, exclude: [fc]}
      - finalize: {semi_structured: false}
  - from: pruned
    name: then int8
    steps:
      - fuse: {include: ["*"]}
      - quantize: {config: {weight: {bits: 8, granularity: channel}, observer: mse}, max_batches: 1}
      - convert: {fuse_siblings: false}
      - save: {path: m.safetensors}
      - export: {path: m.onnx, opset: 17}
  - steps:
      - prepare_qat: {config: {weight: {bits: 4}}, method: lsq, lsq_init: lsq}
      - finetune: {epochs: 1}
      - convert
  - steps:
      - factorize: {config: {rank: auto, budget: 0.5}, exclude: fc}
      - merge_lowrank
  - steps:
      - kmeans_quantize: {bits: 3, iters: 5, weighted: true}
  - steps:
      - prune_channels: {config: {target: {params: 0.5}, round_to: 4, ignore: [fc]}}
      - distill: {epochs: 1, method: dkd, temperature: 2.0, beta: 4.0, cache: true}
"""
)


def test_every_step_kind_round_trips_through_dumps() -> None:
    r = loads(EVERY_STEP)
    kinds = {s.kind for s in r.steps} | {s.kind for v in r.variants for s in v.steps}
    assert kinds == set(STEPS.names())  # the recipe above uses every registered step
    again = loads(dumps(r))
    assert again.steps == r.steps
    assert [(v.steps, v.name, v.base, v.id) for v in again.variants] == [
        (v.steps, v.name, v.base, v.id) for v in r.variants
    ]
    assert again.latency is None and again.seed == 0
    assert dumps(again) == dumps(r)


def test_steps_hold_the_python_api_configs() -> None:
    r = loads(EVERY_STEP)
    prune = r.variants[0].steps[0]
    assert prune.config == tc.PruneConfig(sparsity=0.5, criterion="l1", pattern="channel")
    assert prune.exclude == ("fc",)
    quant = r.variants[1].steps[1]
    assert quant.config == tc.QuantConfig(
        weight=tc.IntSpec(8, granularity="channel"), observer="mse"
    )
    flat = loads(HEAD + "  - prune: {sparsity: 0.5, criterion: l1, exclude: [fc]}\n")
    assert (
        flat.steps[-1]
        == loads(
            HEAD + "  - prune: {config: {sparsity: 0.5, criterion: l1}, exclude: [fc]}\n"
        ).steps[-1]
    )


def _error(text: str, source: str = "r.yaml") -> str:
    with pytest.raises(ConfigError) as e:
        loads(text, source=source)
    return str(e.value)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            "  - prune: {sparsty: 0.5}\n",
            "r.yaml: steps[2] (prune).sparsty: unknown key 'sparsty' for step 'prune'",
        ),
        ("  - prune: {sparsty: 0.5}\n", "Did you mean 'sparsity'?"),
        (
            "  - prune: {config: {sparsity: 2.0}}\n",
            "r.yaml: steps[2] (prune).config: PruneConfig.sparsity=2.0",
        ),
        (
            "  - prune: {config: {sparsity: 0.5}, sparsity: 0.5}\n",
            "either inside config: or directly",
        ),
        ("  - quantise: {}\n", "r.yaml: steps[2]: unknown step 'quantise'"),
        ("  - quantise: {}\n", "Did you mean 'quantize' or"),
        (
            "  - finetune: {epochs: two}\n",
            "steps[2] (finetune).epochs: expected an integer, got a string ('two')",
        ),
        ("  - finetune: {lr: -1}\n", "steps[2] (finetune): finetune.lr=-1 is outside (0, inf)"),
        ("  - finetune: 3\n", "step 'finetune' takes a mapping of keys"),
        ("  - {finetune: {}, evaluate: {}}\n", "a step is one 'kind: {keys}' mapping"),
        ("  - quantize: {config: {weight: {bits: 8, granularity: chanel}}}\n", "granularity"),
        (
            "  - convert\n",
            "r.yaml: steps[2] (convert): nothing to convert: call quantize or prepare_qat first",
        ),
        (
            "  - quantize: {}\n  - prune: {}\n",
            "steps[3] (prune): the model is already quantized (fake_quant): prune before",
        ),
        (
            "  - prune: {}\n  - quantize: {}\n",
            "steps[3] (quantize): the model is masked: call finalize first",
        ),
        ("  - quantize: {}\n  - convert\n  - finetune: {}\n", "fine-tune before convert"),
        ("  - model: resnet20\n", "steps[2] (model): a second model step"),
        ("  - save: {path: ''}\n", "save.path must not be empty"),
    ],
)
def test_errors_name_the_file_the_step_and_the_key(tail: str, expected: str) -> None:
    assert expected in _error(HEAD + tail)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "steps: [{model: resnet20}]\nseeds: 1\n",
            "r.yaml: unknown key 'seeds' (recipe keys: name, description, seed, cache, latency, steps, variants). Did you mean 'seed' or 'steps'?",
        ),
        ("name: x\n", "r.yaml: a recipe needs 'steps:'"),
        ("steps: [{data: digits}]\n", "r.yaml: steps: the recipe has no model step"),
        (
            "steps: [{evaluate: {}}, {model: resnet20}]\n",
            "steps[0] (evaluate): evaluate needs a model: put a 'model' step first",
        ),
        (
            "steps: [{model: resnet20}, {finetune: {}}]\n",
            "steps[1] (finetune): finetune needs data: put a 'data' step before it",
        ),
        (
            "steps: [{model: resnet20}, {profile: {}}]\n",
            "profile needs example inputs: add a data step or model.input_shape",
        ),
        ("steps: [{model: resnt20}]\n", "r.yaml: steps[0] (model): Unknown model 'resnt20'"),
        (
            "steps: [{model: 'torch.nn:Linear'}]\n",
            "steps[0] (model): torch.nn:Linear: missing a required argument: 'in_features'",
        ),
        ("steps: [{model: 'no_pkg.mod:f'}]\n", "module 'no_pkg.mod' does not import"),
        ("steps: [{model: {name: resnet20, weights: nothere.safetensors}}]\n", "weights file"),
        (
            "steps: [{model: {name: resnet20, factory: 'a:b'}}]\n",
            "give exactly one of name:, factory: or hf:",
        ),
        (
            "steps: [{model: resnet20}, {data: 'digits(img_size=8)'}]\n",
            "steps[1] (data): digits: got an unexpected keyword argument 'img_size'",
        ),
        (
            "steps: [{model: resnet20}, {data: digits}]\nvariants: [{steps: [{data: digits}]}]\n",
            "variants[0].steps[0] (data): a variant starts from the baseline's model and data",
        ),
        (
            "steps: [{model: resnet20}]\nvariants: [{from: x, steps: []}]\n",
            "variants[0].from: 'from: x' names no earlier variant",
        ),
        (
            "steps: [{model: resnet20}]\nvariants: [{steps: [fuse]}, {steps: [fuse]}]\n",
            "variants[1]: two variants are labelled 'BN folded': give one a 'name:'",
        ),
        (
            "steps: [{model: resnet20}]\nvariants: [{stepz: []}]\n",
            "variants[0]: unknown key 'stepz'",
        ),
        (
            "steps: [{model: resnet20}]\nlatency: {max_rounds: 0}\n",
            "r.yaml: latency: latency.max_rounds=0",
        ),
        ("steps: [{model: resnet20}]\nseed: -1\n", "seed: expected a non-negative integer"),
        (
            "steps:\n  - model: resnet20\n  - model: resnet20\n  - model resnet20: {\n",
            "r.yaml: line 5, column 1: not valid YAML/JSON",
        ),
        (
            "steps: [{model: resnet20}]\nseed: 1\nseed: 2\n",
            "r.yaml: line 3: the key 'seed' appears twice",
        ),
        ("- 3\n", "r.yaml: steps[0]: a step is one 'kind: {keys}' mapping"),
        ("42\n", "r.yaml: a recipe is a mapping with 'steps:'"),
    ],
)
def test_recipe_level_errors(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_load_names_a_missing_file_and_reads_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"recipe file '.*nothere.yaml' does not exist"):
        load(tmp_path / "nothere.yaml")
    p = tmp_path / "r.json"
    p.write_text('{"steps": [{"model": "resnet20"}, {"prune": {"sparsity": 0.5}}]}')
    assert [s.kind for s in load(p).steps] == ["model", "prune"]


def test_scientific_floats_and_relative_weights(tmp_path: Path) -> None:
    r = loads(HEAD + "  - finetune: {lr: 1e-3, weight_decay: 5e-4}\n")
    assert r.steps[-1].lr == 1e-3 and r.steps[-1].weight_decay == 5e-4
    from torchcompress.testing import MixedConvNet

    model = MixedConvNet()
    tc.save(model, tmp_path / "w.safetensors")
    (tmp_path / "r.yaml").write_text(
        f"steps: [{{model: {{factory: '{MODEL}', weights: w.safetensors}}}}]\n"
    )
    assert load(tmp_path / "r.yaml").steps[0].weights == "w.safetensors"  # found beside the recipe


@pytest.fixture
def planned_heads(monkeypatch):
    """A step of the planned surface whose verb is not in this build (a slot in PLANNED)."""
    monkeypatch.setitem(PLANNED, "prune_heads", "tc.prune_heads (head pruning)")


def test_a_planned_step_not_in_this_build_is_named(planned_heads) -> None:
    assert (
        "step 'prune_heads' needs tc.prune_heads (head pruning), which is not in this build"
        in _error(HEAD + "  - prune_heads: {epochs: 1}\n")
    )


def test_optional_variants_with_planned_steps_are_kept_and_labelled(planned_heads) -> None:
    r = loads(
        HEAD
        + "variants:\n  - optional: true\n"
        + "    steps: [{prune_heads: {epochs: 2}}, {finetune: {epochs: 1}}]\n"
    )
    v = r.variants[0]
    assert v.missing == ["prune_heads"] and v.label() == "prune_heads (not built) + fine-tuned 1 ep"
    assert "  steps:\n  - prune_heads:\n      epochs: 2\n  - finetune:" in dumps(r)


def test_the_distill_step_holds_its_method() -> None:
    r = loads(EVERY_STEP)
    step = r.variants[-1].steps[-1]
    assert (step.kind, step.method, step.temperature, step.beta, step.cache) == (
        "distill",
        "dkd",
        2.0,
        4.0,
        True,
    )
    assert step.distiller().labels == ["ce", "dkd"]
    assert "distill: method='svd' is not one of ['kd', 'dkd']" in _error(
        HEAD + "  - quantize: {}\n  - distill: {method: svd}\n"
    )


def test_variant_labels_follow_from_and_ids() -> None:
    r = loads(
        HEAD
        + "variants:\n  - {id: a, steps: [fuse]}\n  - {from: a, steps: [{quantize: {}}]}\n  - {from: 'BN folded', name: again, steps: [{quantize: {}}, convert]}\n"
    )
    from torchcompress.recipe.document import variant_labels, variant_parents

    assert variant_parents(r) == [None, 0, 0]
    assert variant_labels(r) == ["BN folded", "BN folded + W8A8 static PTQ", "again"]
