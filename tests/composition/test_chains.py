"""Longer pipelines, with the outputs compared after each step and after a save/load round trip.

- fuse -> prune -> prepare_qat -> finetune -> convert -> save -> load -> profile (a CNN with a
  residual add, a concatenation, a depthwise conv and a Linear after a flatten);
- prune -> factorize -> quantize -> convert;
- factorize -> prune -> quantize -> convert;
- prune -> kmeans_quantize;
- prune (Wanda) -> quantize -> convert on a GPT-2 built from a config, its tied head included.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.testing import BranchyNet


def branchy() -> nn.Module:
    torch.manual_seed(0)
    m = BranchyNet().eval()
    with torch.no_grad():
        for bn in (m.bn0, m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return m


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    ).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def _weights_zero(model: nn.Module, x) -> int:
    prof = tc.profile(model, x)
    return sum(r.params - r.nonzero_params for r in prof.rows if r.params and r.type != "Identity")


@pytest.mark.slow
def test_fuse_prune_qat_finetune_convert_save_load_profile(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, generator=g)
    data = [
        (torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))
        for _ in range(4)
    ]
    m = branchy()
    y0 = m(x)
    tc.fuse(m)
    y1 = m(x)
    assert _rel(y1, y0) < 1e-5  # folding BatchNorms is exact
    tc.prune(m, tc.PruneConfig(sparsity=0.5), exclude=["dw"])
    pruned = {
        n: (mod.weight == 0).clone() for n, mod in m.named_modules() if tc.forms.forms_of(mod)
    }
    assert set(pruned) == {"stem", "res", "side", "fc"}
    tc.prepare_qat(m, tc.QuantConfig(), "ste", [d[0] for d in data])
    y2 = m(x)
    tc.finetune(m, data, epochs=2, lr=0.01)
    for name, zero in pruned.items():  # pruned weights stayed zero through QAT training
        assert bool((m.get_submodule(name).weight[zero] == 0).all()), name
    y3 = m(x).detach()
    tc.convert(m)
    y4 = m(x)
    assert _rel(y4, y3) < 0.05  # the integer model runs what the QAT model simulated
    assert _rel(y2, y1) < 0.5
    prof = tc.profile(m, x)
    for name, zero in pruned.items():  # the int8 weights still hold the zeros
        row = prof[name]
        assert row.params - row.nonzero_params >= int(zero.sum()), name
        assert row.effective_macs < row.macs, name
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, branchy())
    assert torch.equal(fresh(x), y4)
    assert tc.profile(fresh, x).totals == prof.totals


@pytest.mark.parametrize("first", ["prune", "factorize"])
def test_prune_and_factorize_then_quantize_convert(first: str, tmp_path) -> None:
    x = torch.randn(16, 32)
    m = mlp()
    prune = lambda: tc.prune(m, tc.PruneConfig(sparsity=0.5))  # noqa: E731
    factorize = lambda: tc.factorize(m, tc.LowRankConfig(rank=8), include=["2"])  # noqa: E731
    outputs = [m(x)]
    for step in (prune, factorize) if first == "prune" else (factorize, prune):
        step()
        outputs.append(m(x))
    forms = tc.forms.layer_forms(m)
    if first == "prune":  # the factors are dense again: the mask of layer 2 was dropped, said so
        assert forms == {"0": {"masked"}, "2": {"factorized"}, "4": {"masked"}}
    else:  # the factors are pruned
        assert forms == {"0": {"masked"}, "2": {"factorized", "masked"}, "4": {"masked"}}
    zeros = _weights_zero(m, x)
    tc.quantize(m, tc.QuantConfig(), [torch.randn(16, 32) for _ in range(3)])
    outputs.append(m(x))
    assert _rel(outputs[-1], outputs[-2]) < 0.1
    tc.convert(m)
    outputs.append(m(x))
    assert _rel(outputs[-1], outputs[-2]) < 0.05
    assert _weights_zero(m, x) >= zeros
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    assert torch.equal(tc.load(path, mlp())(x), outputs[-1])


def test_prune_then_kmeans_keeps_the_zeros(tmp_path) -> None:
    x = torch.randn(16, 32)
    m = tc.prune(mlp(), tc.PruneConfig(sparsity=0.6))
    zero = {n: (m.get_submodule(n).weight == 0).clone() for n in ("0", "2", "4")}
    y = m(x)
    tc.kmeans_quantize(m, bits=3)
    assert _rel(m(x), y) < 0.2
    for n, z in zero.items():
        w = m.get_submodule(n).weight
        assert bool((w[z] == 0).all()), n
    path = tmp_path / "k.safetensors"
    tc.save(m, path)
    assert torch.equal(tc.load(path, mlp())(x), m(x))


@pytest.mark.hf
@pytest.mark.slow
def test_gpt2_wanda_quantize_convert_round_trip(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")

    def gpt2() -> nn.Module:
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(
            vocab_size=100,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(cfg).eval()

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 100, (2, 16), generator=g)} for _ in range(3)]
    ids = torch.randint(0, 100, (2, 16), generator=g)
    m = gpt2()
    y = m(ids).logits
    tc.prune(m, tc.PruneConfig(sparsity=0.5, criterion="wanda"), data)  # the tied head is left
    assert "lm_head" not in tc.forms.layer_forms(m)
    tc.quantize(m, tc.QuantConfig(mode="dynamic"))
    assert tc.forms.layer_forms(m)["transformer.h.0.attn.c_attn"] == {"masked", "fake-quant"}
    tc.convert(m)
    y2 = m(ids).logits
    assert bool(torch.isfinite(y2).all()) and _rel(y2, y) < 1.0
    assert not hasattr(m.lm_head, "weight") or m.lm_head.weight is m.transformer.wte.weight
    path = tmp_path / "g.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, gpt2())
    assert torch.equal(fresh(ids).logits, y2)
