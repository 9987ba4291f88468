"""tc.factorize end to end: methods, data, selection, report, merge and save/load round trips."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchcompress as tc
from torchcompress.errors import CalibrationError, DataError, SelectionError, UnsupportedModuleError
from torchcompress.lowrank import LowRankConfig, LowRankConv2d, LowRankLinear, lowrank_report

from .conftest import TinyCNN, correlated


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_whitened_beats_plain_svd_on_correlated_inputs() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    calib = correlated(512, 64, rank=8, seed=1)
    test = correlated(768, 64, rank=8, seed=1)[512:]  # same subspace, fresh samples
    ref = layer(test)
    errs = {}
    for method in ("svd", "whitened", "activation_aware"):
        m = nn.Sequential(nn.Linear(64, 64))
        m[0].load_state_dict(layer.state_dict())
        tc.factorize(m, LowRankConfig(rank=8, method=method), calib)
        errs[method] = _rel(m(test), ref)
    assert errs["whitened"] < 0.5 * errs["svd"], errs
    assert errs["whitened"] < 0.05


def test_whitened_energy_is_the_output_energy_kept() -> None:
    torch.manual_seed(0)
    X = correlated(400, 32, rank=12, seed=3).double()
    m = nn.Sequential(nn.Linear(32, 48, bias=False)).double()
    W = m[0].weight.detach().clone()
    tc.factorize(m, LowRankConfig(rank=6, method="whitened", damping=0.0), X)
    kept = lowrank_report(m).layers[0].energy_kept
    # exact: ||(W - W_r) X^T||^2 / ||W X^T||^2 = 1 - energy kept (SVD-LLM's truncation-loss identity)
    err2 = float(((X @ W.T - m(X).detach()) ** 2).sum() / ((X @ W.T) ** 2).sum())
    assert err2 == pytest.approx(1 - kept, rel=1e-6, abs=1e-10)


def test_whitened_beats_svd_on_a_conv_layer(tiny_cnn: TinyCNN) -> None:
    torch.manual_seed(0)
    base = torch.randn(1, 3, 1, 1)
    calib = base + 0.1 * torch.randn(16, 3, 16, 16)  # strongly correlated channels
    test = base + 0.1 * torch.randn(8, 3, 16, 16)
    h = torch.relu(tiny_cnn.conv1(test))
    ref = tiny_cnn.conv2(h)
    errs = {}
    for method in ("svd", "whitened"):
        model = TinyCNN().eval()
        model.load_state_dict(tiny_cnn.state_dict())
        tc.factorize(model, LowRankConfig(rank=6, method=method), calib, include=["conv2"])
        errs[method] = _rel(model.conv2(h), ref)
    assert errs["whitened"] < 0.8 * errs["svd"], errs


def test_activation_aware_protects_large_input_channels() -> None:
    torch.manual_seed(0)
    scale = torch.ones(64)
    scale[:8] = 20.0  # a few outlier channels, as in LLM activations
    calib = torch.randn(512, 64) * scale
    test = torch.randn(256, 64) * scale
    layer = nn.Linear(64, 64)
    ref = layer(test)
    errs = {}
    for method in ("svd", "activation_aware"):
        m = nn.Sequential(nn.Linear(64, 64))
        m[0].load_state_dict(layer.state_dict())
        tc.factorize(m, LowRankConfig(rank=16, method=method, alpha=1.0), calib)
        errs[method] = _rel(m(test), ref)
    assert errs["activation_aware"] < 0.8 * errs["svd"], errs


@pytest.mark.parametrize("method", ["activation_aware", "whitened"])
def test_data_aware_methods_need_calib_data(mlp: nn.Module, method: str) -> None:
    with pytest.raises(DataError, match=f"method='{method}'.*needs calib_data"):
        tc.factorize(mlp, LowRankConfig(method=method))


def test_calibration_accepts_loaders_and_keyword_batches(mlp: nn.Module) -> None:
    ds = TensorDataset(torch.randn(64, 64), torch.randint(0, 8, (64,)))
    tc.factorize(
        mlp, LowRankConfig(rank=8, method="whitened", max_batches=2), DataLoader(ds, batch_size=16)
    )
    rep = lowrank_report(mlp)
    assert rep.calib_batches == 2 and rep.layers[0].macs_before == 16 * 64 * 96

    class KwModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 32)
            self.proj = nn.Linear(32, 32)
            self.head = nn.Linear(32, 4)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.proj(self.emb(input_ids)) * attention_mask.unsqueeze(-1)
            return self.head(h.mean(1))

    km = KwModel().eval()
    batches = [
        {
            "input_ids": torch.randint(0, 50, (4, 7)),
            "attention_mask": torch.ones(4, 7),
            "labels": torch.zeros(4),
        }
        for _ in range(3)
    ]
    tc.factorize(km, LowRankConfig(rank=4, method="whitened"), batches)
    assert isinstance(km.proj, LowRankLinear)
    assert lowrank_report(km).layers[0].macs_before == 4 * 7 * 32 * 32


def test_bad_batches_and_unreached_layers_are_clear_errors(mlp: nn.Module) -> None:
    with pytest.raises(DataError, match="Batch 0 of calib_data does not fit"):
        tc.factorize(mlp, LowRankConfig(method="whitened"), torch.randn(4, 13))
    with pytest.raises(DataError, match="no batch"):
        tc.factorize(mlp, LowRankConfig(method="whitened"), [])

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(32, 32)
            self.unused = nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(CalibrationError, match="'unused' was never run"):
        tc.factorize(Branchy(), LowRankConfig(rank=4, method="whitened"), torch.randn(8, 32))


def test_include_exclude_and_refactorizing(tiny_cnn: TinyCNN) -> None:
    x = torch.randn(2, 3, 16, 16)
    tc.factorize(tiny_cnn, LowRankConfig(rank=0.25), include=["conv*"], exclude=["conv3"])
    assert isinstance(tiny_cnn.conv1, LowRankConv2d) and isinstance(tiny_cnn.conv2, LowRankConv2d)
    assert type(tiny_cnn.conv3) is nn.Conv2d and type(tiny_cnn.fc) is nn.Linear
    # a second call leaves factorized layers alone and takes the rest
    tc.factorize(tiny_cnn, LowRankConfig(rank=0.25))
    assert isinstance(tiny_cnn.conv3, LowRankConv2d) and isinstance(tiny_cnn.fc, LowRankLinear)
    assert tiny_cnn.conv3.groups == 2
    assert [la.name for la in lowrank_report(tiny_cnn).layers] == ["conv3", "dw", "fc"]
    assert tiny_cnn(x).shape == (2, 10)
    with pytest.raises(SelectionError, match="matches no module"):
        tc.factorize(tiny_cnn, LowRankConfig(), include=["nope"])
    with pytest.raises(UnsupportedModuleError, match="'pool'"):
        tc.factorize(TinyCNN(), LowRankConfig(), include=["pool"])


def test_tied_weights_and_attention_projections_stay_dense() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 64)
            self.body = nn.Linear(64, 64)
            self.lm_head = nn.Linear(64, 100, bias=False)
            self.lm_head.weight = self.emb.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.lm_head(self.body(self.emb(ids)))

    m = TiedLM()
    tc.factorize(m, LowRankConfig(rank=8))
    rep = {la.name: la for la in lowrank_report(m).layers}
    assert not rep["lm_head"].factorized and "tied to 'emb'" in rep["lm_head"].reason
    assert m.lm_head.weight is m.emb.weight and isinstance(m.body, LowRankLinear)

    enc = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    tc.factorize(enc, LowRankConfig(rank=4), x)
    assert type(enc.self_attn.out_proj) is not LowRankLinear and isinstance(
        enc.linear1, LowRankLinear
    )
    assert enc(x).shape == x.shape
    enc2 = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True)
    with pytest.raises(UnsupportedModuleError, match="MultiheadAttention"):
        tc.factorize(enc2, LowRankConfig(rank=4), include=["self_attn.out_proj"])


def test_report_is_printable_and_complete(tiny_cnn: TinyCNN) -> None:
    tc.factorize(tiny_cnn, LowRankConfig(rank="auto", budget=0.5), torch.randn(2, 3, 16, 16))
    rep = lowrank_report(tiny_cnn)
    text = str(rep)
    assert "conv1" in text and "dense/" in text and "break-even" in text and "achieved" in text
    d = rep.to_dict()
    assert d["params_ratio"] == pytest.approx(rep.params_after / rep.params_before)
    assert {r["name"] for r in d["layers"]} == {"conv1", "conv2", "conv3", "dw", "fc"}
    assert rep.seconds["decomposition"] >= 0
    hist = tc.io.history(tiny_cnn)
    assert hist[-1]["step"] == "factorize" and hist[-1]["config"]["rank"] == "auto"


def test_merge_round_trip(tiny_cnn: TinyCNN) -> None:
    x = torch.randn(2, 3, 16, 16)
    tc.factorize(tiny_cnn, LowRankConfig(rank=0.5, method="whitened"), x)
    y = tiny_cnn(x)
    tc.merge_lowrank(tiny_cnn)
    assert not any(isinstance(m, tc.lowrank.LowRankModule) for m in tiny_cnn.modules())
    assert type(tiny_cnn.conv3) is nn.Conv2d and tiny_cnn.conv3.groups == 2
    assert tiny_cnn.conv2.dilation == (2, 2) and tiny_cnn.conv2.bias is None
    torch.testing.assert_close(tiny_cnn(x), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(tc.errors.CompressionStateError, match="no factorized layer"):
        tc.merge_lowrank(tiny_cnn)


def test_save_load_round_trip(tmp_path, tiny_cnn: TinyCNN) -> None:
    x = torch.randn(2, 3, 16, 16)
    tc.factorize(tiny_cnn, LowRankConfig(rank="auto", budget=0.4, method="activation_aware"), x)
    y = tiny_cnn(x)
    path = os.path.join(tmp_path, "m.safetensors")
    tc.save(tiny_cnn, path)
    fresh = TinyCNN().eval()
    tc.load(path, fresh)
    torch.testing.assert_close(fresh(x), y)
    for name in ("conv1", "conv2", "conv3", "fc"):
        a, b = getattr(fresh, name), getattr(tiny_cnn, name)
        assert type(a) is type(b) and getattr(a, "rank", None) == getattr(b, "rank", None)
    assert isinstance(fresh.conv2, LowRankConv2d)
    assert tc.io.history(fresh)[-1]["step"] == "factorize"
    rebuilt = lowrank_report(fresh)  # rebuilt from the modules after load
    assert [la.rank for la in rebuilt.layers] == [
        la.rank for la in lowrank_report(tiny_cnn).layers if la.factorized
    ]
    # merged models save and load as plain layers
    tc.merge_lowrank(tiny_cnn)
    tc.save(tiny_cnn, path)
    fresh2 = TinyCNN().eval()
    torch.testing.assert_close(tc.load(path, fresh2)(x), tiny_cnn(x))


def test_conv1d_and_float64_models() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(8, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 32, 3, dilation=2)
    ).double()
    x = torch.randn(4, 8, 40, dtype=torch.float64)
    y = model(x)
    tc.factorize(model, LowRankConfig(rank=12, method="whitened"), x)
    assert isinstance(model[0], tc.lowrank.LowRankConv1d) and isinstance(
        model[2], tc.lowrank.LowRankConv1d
    )
    assert model[2].dilation == (2,)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(x).shape == y.shape
    # the dense view of the factors is exactly what the factorized layer computes
    h = model[0](x)
    ref = nn.functional.conv1d(x, model[0].weight, model[0].bias, padding=2)
    assert _rel(h, ref) < 1e-9


def test_bfloat16_model_with_plain_svd() -> None:
    model = nn.Sequential(nn.Linear(64, 64)).to(torch.bfloat16)
    tc.factorize(model, LowRankConfig(rank=16))
    assert model[0].first.weight.dtype == torch.bfloat16


@pytest.mark.hf
def test_huggingface_conv1d_is_supported() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(96, 64))  # GPT-2 style: weight is in x out
    W = model[0].weight.detach().T.double()  # out x in
    b = model[0].bias.detach()
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    best = (U[:, :16] * s[:16]) @ Vh[:16]
    x = torch.randn(5, 64)
    tc.factorize(model, LowRankConfig(rank=16))
    assert isinstance(model[0], LowRankLinear)
    torch.testing.assert_close(model(x), x @ best.T.float() + b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_factorize_on_cuda(tmp_path) -> None:
    model = TinyCNN().cuda().eval()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    y = model(x)
    tc.factorize(
        model, LowRankConfig(rank="auto", budget=0.6, budget_kind="flops", method="whitened"), x
    )
    assert all(p.is_cuda for p in model.parameters())
    assert _rel(model(x), y) < 1.0
    path = os.path.join(tmp_path, "m.safetensors")
    tc.save(model, path)
    fresh = TinyCNN().cuda().eval()
    torch.testing.assert_close(tc.load(path, fresh)(x), model(x))


def test_profile_counts_factorized_layers_at_their_real_cost(tiny_cnn: TinyCNN) -> None:
    profiling = pytest.importorskip("torchcompress.profiling")
    x = torch.randn(2, 3, 16, 16)
    tc.factorize(tiny_cnn, LowRankConfig(rank="auto", budget=0.5, budget_kind="flops"), x)
    prof = profiling.profile(tiny_cnn, x)
    for la in lowrank_report(tiny_cnn).layers:
        row = prof[la.name]
        assert row.macs == la.macs_after, la.name
        assert row.params == la.params_after, la.name
    expected = sum(la.macs_after for la in lowrank_report(tiny_cnn).layers)
    assert prof.total_macs == expected  # only conv/linear work in this model


@pytest.mark.hf
@pytest.mark.slow
def test_real_minilm_whitened_beats_svd_and_round_trips(tmp_path) -> None:
    pytest.importorskip("transformers")
    hf = pytest.importorskip("torchcompress.models.hf")
    try:
        model, tok = hf.load_minilm()
    except tc.errors.DependencyError:
        pytest.skip("the bundled MiniLM is not installed")
    sents = tc.data.english_sentences(48, seed=1)
    calib = [hf.tokenize(tok, sents[:16])]
    evaluation = sents[16:]
    ref = hf.sentence_embeddings(model, tok, evaluation)
    cos = {}
    import copy

    for method in ("svd", "whitened"):
        m = copy.deepcopy(model)
        tc.factorize(
            m,
            LowRankConfig(rank="params_ratio", value=0.8, method=method),
            calib,
            exclude=["pooler"],
        )
        cos[method] = float((hf.sentence_embeddings(m, tok, evaluation) * ref).sum(-1).mean())
        assert lowrank_report(m).params_ratio <= 0.8
    assert cos["whitened"] > cos["svd"] + 0.1, cos
    path = os.path.join(tmp_path, "minilm.safetensors")
    tc.save(m, path)
    fresh, _ = hf.load_minilm()
    tc.load(path, fresh)
    torch.testing.assert_close(
        hf.sentence_embeddings(fresh, tok, evaluation), hf.sentence_embeddings(m, tok, evaluation)
    )


def test_progress_bars_and_max_batches(mlp: nn.Module, capsys) -> None:
    pytest.importorskip("tqdm")
    batches = [torch.randn(8, 64) for _ in range(5)]
    tc.factorize(
        mlp, LowRankConfig(rank=8, method="whitened", max_batches=3), batches, progress=True
    )
    assert lowrank_report(mlp).calib_batches == 3
    assert capsys.readouterr().out == ""  # bars go to stderr, nothing is printed
