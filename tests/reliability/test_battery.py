"""The bad-input battery: every public verb and config, fed what a user gets wrong.

Each case must raise a :mod:`torchcompress.errors` class (or ``ValueError``/``TypeError``) whose
message names the module or field (every offending layer at once where there are several), and
must leave the model exactly as it was (:func:`torchcompress.testing.assert_unchanged`: state bit
for bit, parameter identities, module classes, hooks, parametrizations, train/eval flags).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress import errors as E
from torchcompress.testing import EmbeddingLSTM, TinyCNN, assert_unchanged


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def lstm() -> nn.Module:
    torch.manual_seed(0)
    return EmbeddingLSTM().eval()


def nan_weights(build: Callable[[], nn.Module], *names: str, value: float = math.nan):
    def make() -> nn.Module:
        m = build()
        with torch.no_grad():
            for n in names:
                m.get_submodule(n).weight[0, 0] = value
        return m

    return make


def pruned(build: Callable[[], nn.Module] = mlp) -> Callable[[], nn.Module]:
    return lambda: tc.prune(build(), tc.PruneConfig(sparsity=0.5))


def factorized() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    return tc.factorize(m, tc.LowRankConfig(rank=4), include=["0"])


def quantized(build: Callable[[], nn.Module] = mlp) -> Callable[[], nn.Module]:
    return lambda: tc.quantize(build(), tc.QuantConfig(mode="dynamic"))


def kmeansed() -> nn.Module:
    return tc.kmeans_quantize(mlp(), bits=3)


X = [torch.randn(4, 8) for _ in range(2)]
XY = [(torch.randn(4, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
IMG = [torch.randn(2, 3, 8, 8)]
NAN_X = [torch.full((4, 8), math.nan)]
INF_X = [torch.full((4, 8), math.inf)]
WRONG = [torch.randn(4, 7)]
INTS = [torch.randint(0, 5, (4, 8))]


def exhausted() -> Any:
    it = iter(X)
    list(it)
    return it


@dataclass
class Case:
    id: str
    build: Callable[[], nn.Module]
    call: Callable[[nn.Module], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    match: str


Q = tc.QuantConfig
P = tc.PruneConfig
L = tc.LowRankConfig
CASES = [
    # --- configs: values out of range, wrong types ----------------------------------------------
    Case("intspec-bits-1", mlp, lambda m: tc.IntSpec(bits=1), E.ConfigError, "bits"),
    Case("intspec-bits-9", mlp, lambda m: tc.IntSpec(bits=9), E.ConfigError, "bits"),
    Case("intspec-bits-str", mlp, lambda m: tc.IntSpec(bits="8"), E.ConfigError, "bits"),
    Case(
        "intspec-gran", mlp, lambda m: tc.IntSpec(granularity="row"), E.ConfigError, "granularity"
    ),
    Case(
        "intspec-group-0",
        mlp,
        lambda m: tc.IntSpec(granularity="group", group_size=0),
        E.ConfigError,
        "group_size",
    ),
    Case("quantconfig-mode", mlp, lambda m: Q(mode="fast"), E.ConfigError, "mode"),
    Case("quantconfig-observer", mlp, lambda m: Q(observer="minmaxx"), E.ConfigError, "minmax"),
    Case("quantconfig-weight-type", mlp, lambda m: Q(weight=8), E.ConfigError, "weight"),
    Case("pruneconfig-sparsity", mlp, lambda m: P(sparsity=1.5), E.ConfigError, "sparsity"),
    Case("pruneconfig-negative", mlp, lambda m: P(sparsity=-0.1), E.ConfigError, "sparsity"),
    Case("pruneconfig-nan", mlp, lambda m: P(sparsity=math.nan), E.ConfigError, "sparsity"),
    Case("pruneconfig-n-over-m", mlp, lambda m: P(pattern="n:m", n=4, m=2), E.ConfigError, "n"),
    Case("pruneconfig-criterion", mlp, lambda m: P(criterion="size"), E.ConfigError, "criterion"),
    Case("lowrank-rank-0", mlp, lambda m: L(rank=0), E.ConfigError, "rank"),
    Case("lowrank-rank-str", mlp, lambda m: L(rank="tiny"), E.ConfigError, "rank"),
    Case("lowrank-method", mlp, lambda m: L(method="qr"), E.ConfigError, "method"),
    Case("schedule-kind", mlp, lambda m: tc.SparsitySchedule("wavy"), E.ConfigError, "kind"),
    Case(
        "schedule-final",
        mlp,
        lambda m: tc.SparsitySchedule("cubic", final=2.0),
        E.ConfigError,
        "final",
    ),
    # --- quantize ---------------------------------------------------------------------------------
    Case(
        "quantize-config-str", mlp, lambda m: tc.quantize(m, "int8"), E.ConfigError, "QuantConfig"
    ),
    Case(
        "quantize-not-a-model",
        mlp,
        lambda m: tc.quantize("model", Q(mode="dynamic")),
        TypeError,
        "Module",
    ),
    Case("quantize-static-no-data", mlp, lambda m: tc.quantize(m, Q()), E.DataError, "calib_data"),
    Case("quantize-empty", mlp, lambda m: tc.quantize(m, Q(), []), E.DataError, "calib_data"),
    Case(
        "quantize-exhausted",
        mlp,
        lambda m: tc.quantize(m, Q(), exhausted()),
        E.DataError,
        "calib_data",
    ),
    Case("quantize-int-data", mlp, lambda m: tc.quantize(m, Q(), 5), E.DataError, "calib_data"),
    Case(
        "quantize-wrong-shape", mlp, lambda m: tc.quantize(m, Q(), WRONG), E.DataError, r"\(4, 7\)"
    ),
    Case(
        "prune-wanda-wrong-dtype",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda"), INTS),
        E.DataError,
        "int64|Long",
    ),
    Case(
        "quantize-nan-inputs",
        mlp,
        lambda m: tc.quantize(m, Q(), NAN_X),
        E.NumericalError,
        "NaN|Inf",
    ),
    Case(
        "quantize-inf-inputs",
        mlp,
        lambda m: tc.quantize(m, Q(), INF_X),
        E.NumericalError,
        "NaN|Inf",
    ),
    Case(
        "quantize-nan-weights",
        nan_weights(mlp, "0", "2"),
        lambda m: tc.quantize(m, Q(mode="dynamic")),
        E.NumericalError,
        "'0'.*'2'",
    ),
    Case(
        "quantize-group-misfit",
        mlp,
        lambda m: tc.quantize(
            m, Q(weight=tc.IntSpec(4, granularity="group", group_size=3), activation=None)
        ),
        E.ConfigError,
        "'0'.*'2'",
    ),
    Case(
        "quantize-unsupported",
        lstm,
        lambda m: tc.quantize(m, Q(mode="dynamic"), include=["lstm"]),
        E.UnsupportedModuleError,
        "lstm",
    ),
    Case(
        "quantize-nothing",
        lambda: nn.Sequential(nn.Embedding(4, 4)),
        lambda m: tc.quantize(m, Q(mode="dynamic")),
        E.SelectionError,
        "no layer",
    ),
    Case(
        "quantize-include-typo",
        mlp,
        lambda m: tc.quantize(m, Q(mode="dynamic"), include=["fc"]),
        E.SelectionError,
        "'fc'",
    ),
    Case(
        "quantize-include-int",
        mlp,
        lambda m: tc.quantize(m, Q(mode="dynamic"), include=[5]),
        E.SelectionError,
        "include",
    ),
    Case(
        "quantize-graph", mlp, lambda m: tc.quantize(m, Q(), X, graph="fx"), E.ConfigError, "graph"
    ),
    Case(
        "quantize-after-kmeans",
        kmeansed,
        lambda m: tc.quantize(m, Q(mode="dynamic")),
        E.CompressionStateError,
        "'0', '2'.*kmeans",
    ),
    # --- prepare_qat / convert / kmeans / export --------------------------------------------------
    Case(
        "qat-method",
        mlp,
        lambda m: tc.prepare_qat(m, Q(), method="sgd", calib_data=X),
        E.ConfigError,
        "method",
    ),
    Case(
        "qat-nan-weights",
        nan_weights(mlp, "0"),
        lambda m: tc.prepare_qat(m, Q(), calib_data=X),
        E.NumericalError,
        "'0'",
    ),
    Case(
        "qat-after-quantize",
        quantized(),
        lambda m: tc.prepare_qat(m, Q(), calib_data=X),
        E.CompressionStateError,
        "'0', '2'.*fake-quant",
    ),
    Case("convert-first", mlp, lambda m: tc.convert(m), E.CompressionStateError, "tc.quantize"),
    Case(
        "convert-pruned", pruned(), lambda m: tc.convert(m), E.CompressionStateError, "tc.quantize"
    ),
    Case("kmeans-bits-0", mlp, lambda m: tc.kmeans_quantize(m, bits=0), E.ConfigError, "bits"),
    Case("kmeans-bits-9", mlp, lambda m: tc.kmeans_quantize(m, bits=9), E.ConfigError, "bits"),
    Case(
        "kmeans-weighted-no-data",
        mlp,
        lambda m: tc.kmeans_quantize(m, bits=4, weighted=True),
        E.DataError,
        "calib_data",
    ),
    Case(
        "kmeans-nan-weights",
        nan_weights(mlp, "2"),
        lambda m: tc.kmeans_quantize(m, bits=4),
        E.NumericalError,
        "'2'",
    ),
    Case(
        "kmeans-after-quantize",
        quantized(),
        lambda m: tc.kmeans_quantize(m, bits=4),
        E.CompressionStateError,
        "fake-quant",
    ),
    Case(
        "qat-config-str",
        mlp,
        lambda m: tc.prepare_qat(m, "int8", calib_data=X),
        E.ConfigError,
        "QuantConfig",
    ),
    Case(
        "qat-not-a-model",
        mlp,
        lambda m: tc.prepare_qat("m", Q(), calib_data=X),
        TypeError,
        "Module",
    ),
    Case(
        "qat-empty", mlp, lambda m: tc.prepare_qat(m, Q(), calib_data=[]), E.DataError, "calib_data"
    ),
    Case(
        "qat-exhausted",
        mlp,
        lambda m: tc.prepare_qat(m, Q(), calib_data=exhausted()),
        E.DataError,
        "calib_data",
    ),
    Case(
        "qat-wrong-shape",
        mlp,
        lambda m: tc.prepare_qat(m, Q(), calib_data=WRONG),
        E.DataError,
        r"\(4, 7\)",
    ),
    Case(
        "qat-nan-inputs",
        mlp,
        lambda m: tc.prepare_qat(m, Q(), calib_data=NAN_X),
        E.NumericalError,
        "NaN|Inf",
    ),
    Case(
        "qat-after-kmeans",
        kmeansed,
        lambda m: tc.prepare_qat(m, Q(), calib_data=X),
        E.CompressionStateError,
        "'0', '2'.*kmeans",
    ),
    Case(
        "qat-group-misfit-size-1",
        lambda: nn.Sequential(nn.Linear(1, 1)),
        lambda m: tc.prepare_qat(
            m, Q(weight=tc.IntSpec(4, granularity="group", group_size=2), activation=None)
        ),
        E.ConfigError,
        "'0'.*1 inputs",
    ),
    Case(
        "requantize-not-qat",
        quantized(),
        lambda m: tc.quant.requantize(m, Q(weight=tc.IntSpec(4))),
        E.CompressionStateError,
        "prepare_qat",
    ),
    Case(
        "quantize-after-quantize",
        quantized(),
        lambda m: tc.quantize(m, Q(mode="dynamic")),
        E.CompressionStateError,
        "already fake-quant.*'0', '2'",
    ),
    Case("convert-not-a-model", mlp, lambda m: tc.convert("m"), TypeError, "Module"),
    Case(
        "convert-uncalibrated",
        lambda: tc.prepare_qat(mlp(), Q()),
        lambda m: tc.convert(m),
        E.CompressionStateError,
        "calibrated",
    ),
    Case(
        "convert-kmeans", kmeansed, lambda m: tc.convert(m), E.CompressionStateError, "tc.quantize"
    ),
    Case("kmeans-bits-str", mlp, lambda m: tc.kmeans_quantize(m, bits="4"), E.ConfigError, "bits"),
    Case(
        "kmeans-weighted-str",
        mlp,
        lambda m: tc.kmeans_quantize(m, bits=4, weighted="yes"),
        E.ConfigError,
        "weighted",
    ),
    Case("kmeans-init", mlp, lambda m: tc.kmeans_quantize(m, init="random"), E.ConfigError, "init"),
    Case("kmeans-not-a-model", mlp, lambda m: tc.kmeans_quantize("m"), TypeError, "Module"),
    Case(
        "kmeans-weighted-empty",
        mlp,
        lambda m: tc.kmeans_quantize(m, weighted=True, calib_data=[]),
        E.DataError,
        "calib_data",
    ),
    Case(
        "kmeans-weighted-wrong-shape",
        mlp,
        lambda m: tc.kmeans_quantize(m, weighted=True, calib_data=WRONG),
        E.DataError,
        r"\(4, 7\)",
    ),
    Case(
        "kmeans-weighted-nan-statistics",
        mlp,
        lambda m: tc.kmeans_quantize(m, weighted=True, calib_data=NAN_X),
        E.NumericalError,
        "'0', '2'",
    ),
    Case(
        "kmeans-unsupported",
        lstm,
        lambda m: tc.kmeans_quantize(m, include=["lstm"]),
        E.UnsupportedModuleError,
        "lstm",
    ),
    Case(
        "kmeans-after-kmeans",
        kmeansed,
        lambda m: tc.kmeans_quantize(m, bits=4),
        E.CompressionStateError,
        "already kmeans.*'0', '2'",
    ),
    Case(
        "prune-channels-after-prune",
        pruned(cnn),
        lambda m: tc.prune_channels(m, IMG, 0.25),
        E.CompressionStateError,
        "'conv1', 'conv2', 'fc'.*masked.*prune channels first",
    ),
    Case(
        "prune-channels-after-quantize",
        quantized(cnn),
        lambda m: tc.prune_channels(m, IMG, 0.25),
        E.CompressionStateError,
        "'conv1', 'conv2', 'fc'.*fake-quant.*tc.prune_channels before",
    ),
    # --- prune / finalize -------------------------------------------------------------------------
    Case("prune-config-float", mlp, lambda m: tc.prune(m, 0.5), E.ConfigError, "PruneConfig"),
    Case(
        "prune-wanda-no-data",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda")),
        E.DataError,
        "data=",
    ),
    Case(
        "prune-wanda-empty",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda"), []),
        E.DataError,
        "data",
    ),
    Case(
        "prune-wanda-exhausted",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda"), exhausted()),
        E.DataError,
        "data",
    ),
    Case(
        "prune-wanda-wrong-shape",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda"), WRONG),
        E.DataError,
        r"\(4, 7\)",
    ),
    Case(
        "prune-wanda-nan-inputs",
        mlp,
        lambda m: tc.prune(m, P(criterion="wanda"), NAN_X),
        E.NumericalError,
        "NaN",
    ),
    Case(
        "prune-taylor-bad-loss",
        mlp,
        lambda m: tc.prune(m, P(criterion="taylor"), XY, loss_fn=3),
        E.ConfigError,
        "loss_fn",
    ),
    Case(
        "prune-nan-weights",
        nan_weights(mlp, "0", "2"),
        lambda m: tc.prune(m, P()),
        E.NumericalError,
        "'0'.*'2'",
    ),
    Case(
        "prune-pattern-misfit",
        lambda: nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(6, 2)),
        lambda m: tc.prune(m, P(pattern="n:m", n=2, m=4)),
        E.ShapeError,
        "'0'.*'2'",
    ),
    Case(
        "prune-unsupported",
        lstm,
        lambda m: tc.prune(m, P(), include=["lstm"]),
        E.UnsupportedModuleError,
        "lstm",
    ),
    Case(
        "prune-overrides-typo",
        mlp,
        lambda m: tc.prune(m, P(), overrides={"fc": {"sparsity": 0.1}}),
        E.SelectionError,
        "'fc'",
    ),
    Case(
        "prune-overrides-field",
        mlp,
        lambda m: tc.prune(m, P(), overrides={"0": {"sparsity": 2}}),
        E.ConfigError,
        "'0'.*sparsity",
    ),
    Case("prune-lower", pruned(), lambda m: tc.prune(m, P(sparsity=0.2)), E.ConfigError, "regrow"),
    Case(
        "prune-after-quantize",
        quantized(),
        lambda m: tc.prune(m, P()),
        E.CompressionStateError,
        "'0', '2'.*fake-quant.*tc.prune",
    ),
    Case(
        "prune-after-kmeans",
        kmeansed,
        lambda m: tc.prune(m, P()),
        E.CompressionStateError,
        "'0', '2'.*kmeans",
    ),
    Case("finalize-first", mlp, lambda m: tc.finalize(m), E.CompressionStateError, "tc.prune"),
    # --- factorize / merge_lowrank ----------------------------------------------------------------
    Case("factorize-config-int", mlp, lambda m: tc.factorize(m, 4), E.ConfigError, "LowRankConfig"),
    Case(
        "factorize-whitened-no-data",
        mlp,
        lambda m: tc.factorize(m, L(method="whitened")),
        E.DataError,
        "calib_data",
    ),
    Case(
        "factorize-whitened-empty",
        mlp,
        lambda m: tc.factorize(m, L(method="whitened"), []),
        E.DataError,
        "calib_data",
    ),
    Case(
        "factorize-wrong-shape",
        mlp,
        lambda m: tc.factorize(m, L(method="whitened"), WRONG),
        E.DataError,
        r"\(4, 7\)",
    ),
    Case(
        "factorize-nan-inputs",
        mlp,
        lambda m: tc.factorize(m, L(method="whitened"), NAN_X),
        E.NumericalError,
        "NaN",
    ),
    Case(
        "factorize-nan-weights",
        nan_weights(mlp, "0", "2"),
        lambda m: tc.factorize(m, L(rank=2)),
        E.NumericalError,
        "'0'.*'2'",
    ),
    Case(
        "factorize-rank-misfit",
        mlp,
        lambda m: tc.factorize(m, L(rank=5, min_saving=0.0)),
        E.ConfigError,
        "'2'",
    ),
    Case(
        "factorize-unsupported",
        lstm,
        lambda m: tc.factorize(m, L(rank=2), include=["lstm"]),
        E.UnsupportedModuleError,
        "lstm",
    ),
    Case(
        "factorize-after-quantize",
        quantized(),
        lambda m: tc.factorize(m, L(rank=2)),
        E.CompressionStateError,
        "'0', '2'.*tc.factorize",
    ),
    Case(
        "merge-first", mlp, lambda m: tc.merge_lowrank(m), E.CompressionStateError, "tc.factorize"
    ),
    Case(
        "merge-quantized-factors",
        lambda: quantized(factorized)(),
        lambda m: tc.merge_lowrank(m),
        E.CompressionStateError,
        "'0'.*merge_lowrank",
    ),
    # --- fuse / profile ---------------------------------------------------------------------------
    Case("fuse-pairs-str", cnn, lambda m: tc.fuse(m, pairs="conv1,bn1"), E.ConfigError, "pairs"),
    Case(
        "fuse-pairs-typo",
        cnn,
        lambda m: tc.fuse(m, pairs=[("conv1", "bn9")]),
        E.SelectionError,
        "'bn9'",
    ),
    Case("fuse-not-a-model", cnn, lambda m: tc.fuse("model"), TypeError, "Module"),
    Case(
        "fuse-after-quantize",
        quantized(cnn),
        lambda m: tc.fuse(m),
        E.CompressionStateError,
        "'conv1', 'conv2'.*fake-quant.*tc.fuse",
    ),
    Case(
        "profile-wrong-shape",
        cnn,
        lambda m: tc.profile(m, torch.randn(1, 4, 8, 8)),
        E.ShapeError,
        "conv1",
    ),
    # --- evaluate / finetune ----------------------------------------------------------------------
    Case("evaluate-empty", mlp, lambda m: tc.evaluate(m, []), E.DataError, "data"),
    Case(
        "evaluate-labels",
        mlp,
        lambda m: tc.evaluate(m, [(X[0], torch.full((4,), 9))]),
        E.DataError,
        "label 9",
    ),
    Case(
        "evaluate-wrong-shape",
        mlp,
        lambda m: tc.evaluate(m, [(WRONG[0], torch.zeros(4, dtype=torch.long))]),
        E.DataError,
        r"\(4, 7\)",
    ),
    Case("finetune-empty", mlp, lambda m: tc.finetune(m, [], epochs=1), E.DataError, "data"),
    Case(
        "finetune-exhausted",
        mlp,
        lambda m: tc.finetune(m, exhausted(), epochs=1),
        (E.DataError, E.ConfigError),
        "data",
    ),
    Case("finetune-epochs", mlp, lambda m: tc.finetune(m, XY, epochs=-1), E.ConfigError, "epochs"),
    Case("finetune-lr", mlp, lambda m: tc.finetune(m, XY, epochs=1, lr=-0.1), E.ConfigError, "lr"),
    Case(
        "finetune-labels",
        mlp,
        lambda m: tc.finetune(m, [(X[0], torch.full((4,), 9))], epochs=1),
        E.DataError,
        "label 9",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_changes_nothing(case: Case) -> None:
    model = case.build()
    with assert_unchanged(model), pytest.raises(case.error, match=f"(?s){case.match}") as info:
        case.call(model)
    assert isinstance(info.value, E.TorchCompressError | ValueError | TypeError), info.value


def test_save_and_load_errors(tmp_path) -> None:
    from safetensors.torch import save_file

    m = mlp()
    with pytest.raises(E.PathNotFoundError, match="missing"):
        tc.save(m, tmp_path / "missing" / "m.safetensors")
    path = tmp_path / "m.safetensors"
    tc.save(tc.prune(mlp(), P(sparsity=0.5)), path)
    data = path.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], E.DataError, "truncated|not a safetensors"),
        "header only": (data[:200], E.DataError, "not a safetensors"),
        "junk": (b"\x00" * 64, E.DataError, "not a safetensors"),
    }
    for name, (content, error, match) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        fresh = mlp()
        with assert_unchanged(fresh), pytest.raises(error, match=match):
            tc.load(bad, fresh)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    fresh = mlp()
    with assert_unchanged(fresh), pytest.raises(E.DataError, match=r"not written by tc\.save"):
        tc.load(foreign, fresh)
    for other, error, match in (
        (
            nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 2)),
            E.CompressionStateError,
            r"missing \['3.weight', '3.bias'\]",
        ),
        (nn.Sequential(nn.Linear(8, 16)), E.SelectionError, "'2'"),
        (cnn(), E.SelectionError, "'0'"),
    ):
        with assert_unchanged(other), pytest.raises(error, match=match):
            tc.load(path, other)
    with pytest.raises(E.PathNotFoundError, match="No such file"):
        tc.load(tmp_path / "nothing.safetensors", mlp())
