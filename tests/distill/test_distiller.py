"""The Distiller: features of named modules, a frozen teacher, mixes, warm-up, errors, finetune."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.distill import DistillConfig, Distiller, DistillTerm, HintLoss
from torchcompress.distill import functional as DF
from torchcompress.errors import (
    CompressionStateError,
    ConfigError,
    DataError,
    SelectionError,
    ShapeError,
)
from torchcompress.train import LambdaCallback

from .conftest import batches, net, state


def test_hints_reach_the_named_modules_through_learned_adapters():
    student, teacher = net(4), net(16, seed=1).eval()
    d = Distiller(
        [
            DistillTerm("hint", 2.0, student="block", teacher="block"),
            DistillTerm("at", 3.0, student=["stem", "block"]),
            ("kd", 0.5),
        ]
    )
    x, y = batches(1)[0]
    d.attach(student, teacher, example=(x, y))
    hint = d.term_losses[0][0]
    assert isinstance(hint, HintLoss)
    assert isinstance(hint.adapter, nn.Conv2d) and hint.adapter.in_channels == 8
    assert hint.adapter.out_channels == 32 and hint.adapter.kernel_size == (1, 1)
    assert [p.shape for p in d.parameters()] == [(32, 8, 1, 1), (32,)]
    out = student(x)
    total, parts = d.loss(out, (x, y))
    # the same terms computed by hand from the modules
    s_stem, s_block = student.stem(x), student.block(student.stem(x))
    with torch.no_grad():
        t_stem = teacher.stem(x)
        t_block = teacher.block(t_stem)
        t_out = teacher(x)
    want_hint = F.mse_loss(hint.adapter(s_block), t_block)
    want_at = DF.at_loss(s_stem, t_stem) + DF.at_loss(s_block, t_block)
    want_kd = DF.hinton_loss(out, t_out, y, 4.0, 0.9)
    assert parts["hint"].item() == pytest.approx(want_hint.item(), rel=1e-6)
    assert parts["at"].item() == pytest.approx(want_at.item(), rel=1e-6)
    assert parts["kd"].item() == pytest.approx(want_kd.item(), rel=1e-6)
    assert total.item() == pytest.approx(
        2 * want_hint.item() + 3 * want_at.item() + 0.5 * want_kd.item(), rel=1e-6
    )
    total.backward()
    assert student.stem[0].weight.grad is not None and hint.adapter.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    d.detach()
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_teacher_is_frozen_and_its_modes_restored(digits, teacher, caplog):
    teacher.train()  # BatchNorm in train mode would update its statistics
    teacher.block[0].register_forward_pre_hook(  # the test's own probe: grad mode in the teacher
        lambda m, a: seen.append(torch.is_grad_enabled())
    )
    seen: list[bool] = []
    before = state(teacher)
    student = net(4)
    d = Distiller([("kd", 1.0), DistillTerm("hint", 1.0, student="block")])
    with caplog.at_level(logging.WARNING, logger="torchcompress"):
        tc.finetune(student, digits[0], steps=5, teacher=teacher, distill=d, progress=False)
    assert "teacher Net was in train mode" in caplog.text
    assert seen and not any(seen)  # never a graph through the teacher
    after = state(teacher)
    assert before.keys() == after.keys()
    for k in before:  # weights and BN statistics (and num_batches_tracked) unchanged
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert teacher.training and all(m.training for m in teacher.modules())  # restored
    assert not d.is_attached and all(not m._forward_hooks for m in student.modules())


def test_finetune_step_matches_a_hand_written_step():
    student, teacher = net(4, bn=False), net(8, seed=1, bn=False).eval()
    ref = copy.deepcopy(student)
    x, y = batches(1)[0]
    d = Distiller([("kd", 1.0), DistillTerm("hint", 10.0, student="block")])
    with d.attached(student, teacher, example=(x, y)):  # builds the adapter (kept afterwards)
        pass
    adapter = copy.deepcopy(d.term_losses[1][0].adapter)
    common = dict(lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="constant", progress=False)
    tc.finetune(student, [(x, y)], teacher=teacher, distill=d, **common)
    # by hand: one SGD step on the student and the adapter
    with torch.no_grad():
        t_block, t_out = teacher.block(teacher.stem(x)), teacher(x)
    out = ref(x)
    s_block = ref.block(ref.stem(x))
    loss = DF.hinton_loss(out, t_out, y, 4.0, 0.9) + 10 * F.mse_loss(adapter(s_block), t_block)
    loss.backward()
    with torch.no_grad():
        for p in [*ref.parameters(), *adapter.parameters()]:
            p -= 0.1 * p.grad
    for (k, v), w in zip(student.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k
    trained = d.term_losses[1][0].adapter
    for p, q in zip(trained.parameters(), adapter.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_components_are_logged_and_warmup_scales_the_weight():
    student, teacher = net(4), net(8, seed=1).eval()
    d = Distiller([DistillTerm("ce", 1.0), DistillTerm("dkd", 2.0, warmup_steps=4)])
    seen = []
    tc.finetune(
        student,
        batches(6),
        teacher=teacher,
        distill=d,
        progress=False,
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(dict(s.losses)))],
    )
    assert sorted(seen[0]) == ["distill", "distill.ce", "distill.dkd"]
    for step, rec in enumerate(seen):
        w = 2.0 * min(1.0, (step + 1) / 4)
        assert rec["distill"] == pytest.approx(rec["distill.ce"] + w * rec["distill.dkd"], rel=1e-5)
    assert d.steps == 6
    hist = tc.io.history(student)[-1]
    assert hist["config"]["distill"]["terms"][1]["warmup_steps"] == 4


def test_losses_by_name_and_pairs_and_labels():
    d = Distiller(["kd", "ce", ("logit_mse", 3.0), DistillTerm("logit_mse", student="fc")])
    assert d.labels == ["kd", "ce", "logit_mse.1", "logit_mse.2"]
    assert d.config.terms[2].weight == 3.0
    assert Distiller(DistillConfig(terms=["kd"]), cache=True).cache is not None
    assert Distiller({"terms": ["rkd"], "cache": True}).cache is not None


def test_hugging_face_outputs_logits_and_hidden_states_by_name():
    transformers = pytest.importorskip("transformers")

    def bert(hidden: int, layers: int, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(
            vocab_size=30,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=3,
        )
        return transformers.BertForSequenceClassification(cfg)

    teacher, student = bert(16, 2, 1).eval(), bert(8, 1, 0)
    g = torch.Generator().manual_seed(0)
    data = [
        {
            "input_ids": torch.randint(0, 30, (4, 6), generator=g),
            "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=g),
        }
        for _ in range(3)
    ]
    d = Distiller(
        [
            ("kd", 1.0),
            DistillTerm(
                "hint", 1.0, student="bert.encoder.layer.0", teacher="bert.encoder.layer.1"
            ),
            DistillTerm("rkd", 0.1, student="bert.pooler", teacher="bert.pooler"),
        ]
    )
    tc.finetune(student, data, teacher=teacher, distill=d, steps=3, lr=0.01, progress=False)
    adapter = d.term_losses[1][0].adapter
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (8, 16)
    # the hint term compared the layers' hidden states, (N, L, D)
    with d.attached(student, teacher, example=data[0]):
        out = student(**{k: v for k, v in data[0].items() if k != "labels"})
        _, parts = d.loss(out, data[0])
    with torch.no_grad():
        s_h = student.bert(input_ids=data[0]["input_ids"]).last_hidden_state
        t_h = teacher.bert(input_ids=data[0]["input_ids"]).last_hidden_state
        want = F.mse_loss(adapter(s_h), t_h)
    assert parts["hint"].item() == pytest.approx(want.item(), rel=1e-5)


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_module_names_name_the_closest_ones():
    student, teacher = net(4), net(16).eval()
    d = Distiller([DistillTerm("hint", student="blok")])
    with pytest.raises(SelectionError, match=r"no student module 'blok'.*Did you mean 'block'"):
        d.attach(student, teacher)
    d = Distiller([DistillTerm("at", student="stem", teacher="stem.3")])
    with pytest.raises(SelectionError, match=r"no teacher module 'stem.3'.*'stem.2'"):
        tc.finetune(student, batches(2), teacher=teacher, distill=d, progress=False)
    assert not d.is_attached and all(not m._forward_hooks for m in student.modules())


def test_shapes_that_cannot_be_compared_are_clear_errors_and_leave_the_model_alone():
    student, teacher = net(4), net(16).eval()
    before = state(student)
    d = Distiller([DistillTerm("at", student="stem", teacher="block")])  # 8x8 vs 4x4
    with pytest.raises(
        ShapeError, match=r"term 'at' \(student 'stem' / teacher 'block'\).*spatial"
    ):
        tc.finetune(student, batches(2), teacher=teacher, distill=d, progress=False)
    d = Distiller(
        [DistillTerm("hint", student="stem", teacher="block", options={"adapter": "never"})]
    )
    with pytest.raises(ShapeError, match=r"term 'hint'.*same shape"):
        tc.finetune(student, batches(2), teacher=teacher, distill=d, progress=False)
    d = Distiller([("kd", 1.0)])
    four = net(4, classes=4)
    with pytest.raises(ShapeError, match=r"the logits.*student \(8, 4\) and teacher \(8, 10\)"):
        tc.finetune(four, batches(2), teacher=teacher, distill=d, progress=False)
    for k, v in state(student).items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_bad_options_names_and_teachers():
    with pytest.raises(ConfigError, match="temperature=0"):
        Distiller([DistillTerm("kd", options={"temperature": 0})])
    with pytest.raises(ConfigError, match="temperature=-1"):
        tc.distill.kd(temperature=-1)
    with pytest.raises(ConfigError, match=r"Unknown distillation loss 'kdd'.*Did you mean 'kd'"):
        Distiller("kdd")
    with pytest.raises(ConfigError, match=r"no option 'temprature'.*'temperature'"):
        DistillTerm("kd", options={"temprature": 2.0})
    with pytest.raises(ConfigError, match="name the modules"):
        DistillTerm("hint")
    with pytest.raises(ConfigError, match="pairs 2 student module"):
        DistillTerm("at", student=["stem", "block"], teacher="block")
    with pytest.raises(ConfigError, match="weight"):
        DistillTerm("kd", weight=-1.0)
    model = net(4)
    with pytest.raises(ConfigError, match="teacher is the student itself"):
        Distiller("kd").attach(model, model)
    shallow = copy.copy(model)
    with pytest.raises(ConfigError, match="shares 10 parameter"):
        Distiller("kd").attach(model, shallow)
    with pytest.raises(CompressionStateError, match="attach"):
        Distiller("kd").loss(torch.zeros(2, 10), torch.zeros(2, 1, 8, 8))


def test_missing_labels_logits_and_module_outputs():
    student, teacher = net(4), net(8).eval()
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(DataError, match="'kd' needs labels"):
        Distiller("kd").attach(student, teacher, example=x)  # alpha=0.9 reads the labels
    d = Distiller([DistillTerm("kd", options={"alpha": 1.0})])
    with d.attached(student, teacher, example=x):
        loss, _ = d.loss(student(x), x)  # alpha = 1: no labels needed
        assert loss.item() > 0
        with pytest.raises(DataError, match="holds no logits"):
            d.loss({"nothing": 1}, x)

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(64, 10), nn.Linear(64, 10)

        def forward(self, x):
            return self.used(x.flatten(1))

    d = Distiller([DistillTerm("logit_mse", student="unused", teacher="fc")])
    s = Skips()
    with pytest.raises(DataError, match="'unused' did not run"):
        d.attach(s, teacher, example=x)


def test_adapter_without_example_is_an_error_in_a_custom_loop():
    student, teacher = net(4), net(16).eval()
    x = torch.randn(4, 1, 8, 8)
    d = Distiller([DistillTerm("hint", student="block")])
    with d.attached(student, teacher), pytest.raises(CompressionStateError, match="example="):
        d.loss(student(x), x)
    d = Distiller([DistillTerm("hint", student="block")])
    with d.attached(student, net(4, seed=3).eval()):  # equal shapes: no adapter, no example needed
        loss, _ = d.loss(student(x), x)
        assert loss.item() > 0


def test_distill_argument_errors_in_finetune():
    student, teacher = net(4), net(8).eval()
    with pytest.raises(ConfigError, match=r"Distiller\('kd'\)"):
        tc.finetune(student, batches(1), teacher=teacher, distill="kd", progress=False)
    with pytest.raises(ConfigError, match="not both"):
        tc.finetune(
            student,
            batches(1),
            teacher=teacher,
            distill=tc.distill.kd(),
            distill_loss=lambda s, t, y: s.sum(),
            progress=False,
        )
    with pytest.raises(ConfigError, match="distill= needs teacher="):
        tc.finetune(student, batches(1), distill=tc.distill.kd(), progress=False)
    with pytest.raises(CompressionStateError, match="already attached"):
        d = tc.distill.kd()
        d.attach(student, teacher)
        d.attach(student, teacher)


@pytest.mark.gpu
def test_student_on_cuda_teacher_on_cpu_with_cache_and_adapters():
    student, teacher = net(4).to("cuda"), net(16).eval()
    d = Distiller([("kd", 1.0), DistillTerm("hint", 1.0, student="block")], cache=True)
    data = batches(3)
    tc.finetune(student, data, epochs=2, teacher=teacher, distill=d, progress=False)
    assert d.term_losses[1][0].adapter.weight.device.type == "cuda"
    assert next(teacher.parameters()).device.type == "cpu" and d.cache.hits == 24
