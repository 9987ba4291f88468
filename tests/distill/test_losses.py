"""The registered loss classes: each wraps its functional form; adapters; a new loss is one class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.distill import (
    DISTILL_LOSSES,
    AttentionTransferLoss,
    CrossEntropyLoss,
    Distiller,
    DistillLoss,
    DistillTerm,
    DKDLoss,
    HintLoss,
    KDLoss,
    LogitMSELoss,
    RKDLoss,
    build_loss,
)
from torchcompress.distill import functional as DF
from torchcompress.errors import ConfigError, DataError, ShapeError


def test_the_registry_holds_every_loss_of_the_issue():
    assert DISTILL_LOSSES.names() == ["kd", "ce", "logit_mse", "hint", "at", "rkd", "dkd"]
    for name in DISTILL_LOSSES:
        cls = DISTILL_LOSSES.get(name)
        assert issubclass(cls, DistillLoss) and cls.__doc__


def test_classes_compute_their_functional_forms():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    fs, ft = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 7, 4, 4, generator=g)
    assert KDLoss(2.0, 0.6)(s, t, y) == DF.hinton_loss(s, t, y, 2.0, 0.6)
    assert LogitMSELoss()(s, t) == DF.logit_mse(s, t)
    assert CrossEntropyLoss()(s, None, y) == torch.nn.functional.cross_entropy(s, y)
    assert AttentionTransferLoss(p=4.0)(fs, ft) == DF.at_loss(fs, ft, 4.0)
    assert RKDLoss(1.0, 2.0)(s, t) == DF.rkd_loss(s, t, 1.0, 2.0)
    assert DKDLoss(0.5, 4.0, 3.0)(s, t, y) == DF.dkd_loss(s, t, y, 0.5, 4.0, 3.0)
    assert not KDLoss(alpha=1.0).uses_target() and KDLoss().uses_target()
    assert DKDLoss().uses_target() and not CrossEntropyLoss.needs_teacher


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "kind"),
    [
        ((2, 4, 6, 6), (2, 8, 6, 6), nn.Conv2d),
        ((2, 4, 6), (2, 8, 6), nn.Conv1d),
        ((2, 4, 3, 3, 3), (2, 8, 3, 3, 3), nn.Conv3d),
        ((2, 4), (2, 8), nn.Linear),
        ((2, 5, 4), (2, 5, 8), nn.Linear),  # hidden states (N, L, D)
    ],
)
def test_hint_adapters_map_the_students_features(s_shape, t_shape, kind):
    loss = HintLoss()
    s, t = torch.randn(s_shape, dtype=torch.float64), torch.randn(t_shape, dtype=torch.float64)
    loss.prepare(s, t)
    assert isinstance(loss.adapter, kind) and loss.adapter.weight.dtype == torch.float64
    mapped = loss.adapter(s)
    assert mapped.shape == t.shape
    assert loss(s, t).item() == pytest.approx(DF.hint_loss(mapped, t).item())
    same = HintLoss()
    same.prepare(t, t)
    assert same.adapter is None and same(t, t).item() == 0.0
    always = HintLoss(adapter="always")
    always.prepare(t, t)
    assert always.adapter is not None


def test_hint_and_at_shape_errors():
    with pytest.raises(ShapeError, match="1x1 convolution or a linear layer"):
        HintLoss().prepare(torch.randn(2, 4, 6, 6), torch.randn(2, 8, 3, 3))
    with pytest.raises(ShapeError, match="same shape"):
        HintLoss(adapter="never").prepare(torch.randn(2, 4), torch.randn(2, 8))
    with pytest.raises(ConfigError, match=r"adapter='sometimes'.*'always'"):
        HintLoss(adapter="sometimes")
    with pytest.raises(ShapeError, match="spatial"):
        AttentionTransferLoss().prepare(torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3))
    with pytest.raises(ShapeError, match="same batch"):
        RKDLoss().prepare(torch.randn(3, 4), torch.randn(2, 4))


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"KDLoss\.temperature"):
        KDLoss(temperature=0.0)
    with pytest.raises(ConfigError, match=r"KDLoss\.alpha"):
        KDLoss(alpha=1.5)
    with pytest.raises(ConfigError, match=r"DKDLoss\.temperature"):
        DKDLoss(temperature=-2.0)
    with pytest.raises(ConfigError, match="both 0"):
        RKDLoss(0.0, 0.0)
    with pytest.raises(ConfigError, match="must be finite"):
        RKDLoss(float("inf"))
    with pytest.raises(ConfigError, match=r"no option 'beta'.*options: temperature, alpha"):
        build_loss("kd", {"beta": 1.0})
    with pytest.raises(DataError, match=r"'kd' term with alpha=0\.9"):
        KDLoss()(torch.randn(2, 3), torch.randn(2, 3), None)
    with pytest.raises(DataError, match="'ce' term needs labels"):
        CrossEntropyLoss()(torch.randn(2, 3), None, None)


def test_causal_language_model_logits_are_shifted_like_the_models_own_loss():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    y = torch.randint(0, 7, (2, 5), generator=g)
    y[0, :2] = -100
    loss = DKDLoss()
    loss.causal = True
    want = DF.dkd_loss(s[:, :-1], t[:, :-1], y[:, 1:])
    assert loss(s, t, y).item() == pytest.approx(want.item())
    kd = KDLoss(alpha=0.5)
    kd.causal = True
    assert kd(s, t, y).item() == pytest.approx(
        DF.hinton_loss(s[:, :-1], t[:, :-1], y[:, 1:], 4.0, 0.5).item()
    )


def test_a_new_loss_is_one_registered_class():
    @DISTILL_LOSSES.register("cosine_test")
    class CosineLoss(DistillLoss):
        """1 - cosine similarity of the flattened outputs."""

        def forward(self, student, teacher, target=None):
            return (
                1
                - torch.nn.functional.cosine_similarity(
                    student.flatten(1), teacher.flatten(1)
                ).mean()
            )

    try:
        student, teacher = nn.Linear(3, 4), nn.Linear(3, 4)
        x = torch.randn(5, 3)
        d = Distiller([DistillTerm("cosine_test", 2.0)])
        with d.attached(student, teacher.eval(), example=x):
            total, _ = d.loss(student(x), x)
        want = 1 - torch.nn.functional.cosine_similarity(student(x), teacher(x)).mean()
        assert total.item() == pytest.approx(2 * want.item(), rel=1e-6)
    finally:
        DISTILL_LOSSES._entries.pop("cosine_test")
