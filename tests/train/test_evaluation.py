"""tc.evaluate: accuracy and loss against hand-computed values, layouts, modes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError

from .conftest import Fixed, bert_config, gpt2, llama, lm_batches, mlp, tiny_data


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "object", "dict"])
def test_evaluate_accuracy_and_loss_against_hand_computed(wrap):
    torch.manual_seed(0)
    logits = torch.randn(10, 4)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    model = Fixed(logits, wrap)
    data = [(torch.arange(0, 6), target[:6]), (torch.arange(6, 10), target[6:])]
    r = tc.evaluate(model, data, topk=(1, 2))
    assert r["samples"] == 10 and r["batches"] == 2
    assert r["accuracy"] == pytest.approx((logits.argmax(1) == target).float().mean().item())
    top2 = logits.topk(2, dim=1).indices
    assert r["top2_accuracy"] == pytest.approx(
        (top2 == target[:, None]).any(1).float().mean().item()
    )
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert model.grad_enabled == [False, False]  # under no_grad


def test_evaluate_restores_every_submodule_mode():
    model = nn.Sequential(
        nn.Linear(5, 8), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 4))
    )
    model.train()
    model[2][0].eval()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = {n: m.training for n, m in model.named_modules()}
    tc.evaluate(model, tiny_data())
    assert seen and not any(seen)  # ran in eval mode
    assert {n: m.training for n, m in model.named_modules()} == before
    # also after a failure
    with pytest.raises(DataError):
        tc.evaluate(model, [(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))])
    assert {n: m.training for n, m in model.named_modules()} == before


def test_evaluate_token_level_ignore_index_and_dict_batches():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # (N, T, C): class-last, as in Hugging Face

    class Tok(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            assert attention_mask is not None
            return {"logits": logits[: input_ids.shape[0]]}

    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5),
        "labels": labels,
    }
    r = tc.evaluate(Tok(), [batch])
    keep = labels != -100
    acc = (logits.argmax(-1) == labels)[keep].float().mean().item()
    assert r["accuracy"] == pytest.approx(acc)
    assert r["loss"] == pytest.approx(
        F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)).item(), rel=1e-6
    )
    assert r["samples"] == 2


def test_evaluate_class_second_layout_and_soft_targets():
    torch.manual_seed(0)
    seg = torch.randn(2, 3, 4, 4)  # (N, C, H, W) with (N, H, W) labels
    labels = torch.randint(0, 3, (2, 4, 4))

    class Seg(nn.Module):
        def forward(self, x):
            return seg

    r = tc.evaluate(Seg(), [(torch.zeros(2), labels)])
    assert r["accuracy"] == pytest.approx((seg.argmax(1) == labels).float().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(seg, labels).item(), rel=1e-6)
    soft = torch.softmax(torch.randn(10, 4), 1)
    logits = torch.randn(10, 4)
    r = tc.evaluate(Fixed(logits), [(torch.arange(10), soft)])
    assert r["accuracy"] == pytest.approx(
        (logits.argmax(1) == soft.argmax(1)).float().mean().item()
    )
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, soft).item(), rel=1e-6)


def test_evaluate_custom_loss_is_sample_weighted_and_regression_has_no_accuracy():
    model = nn.Linear(3, 2)
    data = [(torch.randn(6, 3), torch.randn(6, 2)), (torch.randn(2, 3), torch.randn(2, 2))]
    r = tc.evaluate(model, data, loss_fn=nn.MSELoss())
    with torch.no_grad():
        per = [F.mse_loss(model(x), y, reduction="none").mean(1) for x, y in data]
    assert r["loss"] == pytest.approx(torch.cat(per).mean().item(), rel=1e-6)
    assert r["accuracy"] is None
    r2 = tc.evaluate(model, data, loss_fn=nn.MSELoss(reduction="none"))
    assert r2["loss"] == pytest.approx(
        torch.cat([F.mse_loss(model(x), y, reduction="none").flatten() for x, y in data])
        .mean()
        .item(),
        rel=1e-5,
    )


def test_evaluate_max_batches_and_device_follow():
    model = mlp()
    r = tc.evaluate(model, tiny_data(), max_batches=2)
    assert r["batches"] == 2 and r["samples"] == 16
    r = tc.evaluate(model, tiny_data(), device="cpu")
    assert r["samples"] == 40


def test_evaluate_bad_input():
    model = mlp()
    with pytest.raises(DataError, match="yielded no batch"):
        tc.evaluate(model, [])
    with pytest.raises(DataError, match="Batch 1 of data does not fit"):
        tc.evaluate(model, [tiny_data()[0], (torch.randn(8, 9), torch.zeros(8, dtype=torch.long))])
    with pytest.raises(DataError, match="has no target"):
        tc.evaluate(model, [torch.randn(4, 5)])
    with pytest.raises(DataError, match="cannot take the cross-entropy"):
        tc.evaluate(model, [(torch.randn(4, 5), torch.zeros(4, 3, dtype=torch.long))])

    class Hidden(nn.Module):
        def forward(self, x):
            return {"hidden": x}

    with pytest.raises(DataError, match="holds no logits"):
        tc.evaluate(Hidden(), [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), max_batches=0)
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), topk=(0,))
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), loss_fn="mse")


@pytest.mark.hf
def test_hf_model_dict_batches_and_model_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (12, 6))
    labels = ids[:, 0] % 3
    data = [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": labels[i : i + 4],
        }
        for i in range(0, 12, 4)
    ]
    r = tc.evaluate(model, data)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in data
            ]
        )
    assert r["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    r_model = tc.evaluate(model, data, loss_fn="model")
    assert r_model["loss"] == pytest.approx(r["loss"], rel=1e-5) and r_model["accuracy"] is None
    tc.finetune(model, data, epochs=15, lr=0.05, loss_fn="model", progress=False)
    assert not model.training
    assert tc.evaluate(model, data)["loss"] < r["loss"]


# --- causal language models: the default agrees with the model's own loss -------------------------


def _own_loss_and_accuracy(model: nn.Module, batches: list[dict]) -> tuple[float, float]:
    """The model's own loss averaged over every scored token, and next-token accuracy."""
    total = count = correct = 0.0
    with torch.no_grad():
        for b in batches:
            out = model(**b)
            n = (b["labels"][:, 1:] != -100).sum().item()  # the tokens HF's loss scores
            total += out.loss.item() * n
            count += n
            keep = b["labels"][:, 1:] != -100
            pred = out.logits[:, :-1].argmax(-1)
            correct += (pred == b["labels"][:, 1:])[keep].sum().item()
    return total / count, correct / count


@pytest.mark.hf
@pytest.mark.parametrize("build", [gpt2, llama], ids=["gpt2", "llama"])
def test_causal_lm_loss_and_accuracy_are_next_token(build):
    model = build()
    data = lm_batches()
    own_loss, own_acc = _own_loss_and_accuracy(model, data)
    r = tc.evaluate(model, data)
    assert r["loss"] == pytest.approx(own_loss, rel=1e-5)
    assert r["accuracy"] == pytest.approx(own_acc)
    assert r["accuracy"] < 0.2  # a random model; unshifted labels would score ~1.0 (the input)
    # loss_fn="model" averages the model's batch means by batch size instead, as documented
    r_model = tc.evaluate(model, data, loss_fn="model")
    with torch.no_grad():
        means = [model(**b).loss.item() for b in data]
    assert r_model["loss"] == pytest.approx(sum(means) / len(means), rel=1e-5)
    # the same through (inputs, targets) tuples: the labels are still the input tokens
    tuples = [(b["input_ids"], b["labels"]) for b in data]
    assert tc.evaluate(model, tuples)["loss"] == pytest.approx(own_loss, rel=1e-5)


@pytest.mark.hf
def test_a_users_loss_fn_wins_over_the_causal_shift():
    model = gpt2()
    data = lm_batches(n=1)

    def unshifted(output, target):
        return F.cross_entropy(
            output.logits.reshape(-1, output.logits.shape[-1]), target.reshape(-1)
        )

    r = tc.evaluate(model, data, loss_fn=unshifted)
    with torch.no_grad():
        expected = unshifted(model(**data[0]), data[0]["labels"]).item()
    assert r["loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.hf
def test_encoder_models_are_not_shifted():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tok = transformers.BertForTokenClassification(bert_config(num_labels=5)).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (4, 7), generator=g)
    labels = torch.randint(0, 5, (4, 7), generator=g)
    labels[:, 0] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    r = tc.evaluate(tok, [batch])
    with torch.no_grad():
        out = tok(**batch)
    keep = labels != -100
    assert r["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert r["accuracy"] == pytest.approx(
        (out.logits.argmax(-1) == labels)[keep].float().mean().item()
    )


# --- labels out of range ----------------------------------------------------------------------------


def test_labels_out_of_range_name_the_batch_the_label_and_the_classes():
    model = mlp()  # 4 classes
    good = tiny_data()[0]
    bad = (torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 7, 0, 1, 2]))
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 7, .* 4 classes"):
        tc.evaluate(model, [good, bad])
    negative = (torch.randn(8, 5), torch.tensor([0, 1, -3, 3, -100, 0, 1, 2]))
    with pytest.raises(DataError, match=r"Batch 0 of data has the label -3, .* 0\.\.3, or -100"):
        tc.evaluate(model, [negative])
    tokens = {"x": torch.randn(2, 5), "labels": torch.tensor([1, 4])}

    class KwModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = mlp()

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(DataError, match=r"Batch 0 of data has the label 4"):
        tc.evaluate(KwModel(), [tokens])


@pytest.mark.gpu
def test_labels_out_of_range_on_cuda_are_a_data_error_not_a_device_assert():
    model = mlp().to("cuda")
    bad = (torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 7, 0, 1, 2]))
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 7, .* 4 classes"):
        tc.evaluate(model, [tiny_data()[0], bad])
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 7, .* 4 classes"):
        tc.finetune(model, [tiny_data()[0], bad], progress=False)
    # no device-side assertion: the device still works, and good labels evaluate as on CPU
    r_gpu = tc.evaluate(model, tiny_data())
    r_cpu = tc.evaluate(copy.deepcopy(model).cpu(), tiny_data())
    assert r_gpu["accuracy"] == r_cpu["accuracy"]
    assert r_gpu["loss"] == pytest.approx(r_cpu["loss"], rel=1e-4)


def test_labels_out_of_range_where_the_loss_cannot_check_them(monkeypatch):
    """Off the CPU the cross-entropy would hit a device-side assertion: the bad labels are left out
    and counted, and the error comes once the loop synchronises (simulated here on CPU)."""
    from torchcompress.train import losses

    monkeypatch.setattr(losses, "_checks_its_labels", lambda device: False)
    model = mlp()
    bad = (torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 7, 0, 1, 2]))
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 7, .* 4 classes"):
        tc.evaluate(model, [tiny_data()[0], bad, tiny_data()[1]])
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 7, .* 4 classes"):
        tc.finetune(model, [tiny_data()[0], bad], progress=False)
    negative = (torch.randn(8, 5), torch.tensor([0, 1, -5, 3, -100, 0, 1, 2]))
    with pytest.raises(DataError, match=r"Batch 0 of data has the label -5"):
        tc.evaluate(model, [negative])
    # good labels: the same numbers as the plain path
    monkeypatch.undo()
    plain = tc.evaluate(model, tiny_data())
    monkeypatch.setattr(losses, "_checks_its_labels", lambda device: False)
    deferred = tc.evaluate(model, tiny_data())
    assert deferred == plain
