"""torchcompress.distill.functional: every loss against a hand computation (plain Python maths),
its gradient against autograd of the written-out formula, zero where student == teacher, and the
errors on bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchcompress.distill import functional as DF
from torchcompress.errors import ConfigError, DataError, ShapeError


def softmax(row: list[float], T: float = 1.0) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def grads(fn, *tensors):
    """d fn / d first tensor (float64 leaves)."""
    leaf = tensors[0].detach().double().requires_grad_(True)
    rest = [t.detach().double() if t.is_floating_point() else t for t in tensors[1:]]
    (g,) = torch.autograd.grad(fn(leaf, *rest), leaf)
    return g


# --- Hinton KD ------------------------------------------------------------------------------------


def test_kd_by_hand_with_temperature_t_squared_and_batchmean():
    s = [[0.5, -1.0, 2.0], [1.0, 1.0, 0.0]]
    t = [[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]]
    T = 3.0
    per_row = [kl(softmax(tr, T), softmax(sr, T)) for sr, tr in zip(s, t)]
    expected = T * T * sum(per_row) / 2  # summed over classes, averaged over the 2 rows only
    got = DF.kd_loss(torch.tensor(s), torch.tensor(t), temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the two mistakes peers make: KL averaged over the classes too, and no T^2
    assert got.item() != pytest.approx(expected / 3, rel=1e-3)
    assert got.item() != pytest.approx(expected / (T * T), rel=1e-3)


def test_kd_rows_of_sequences_and_mask():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    flat = DF.kd_loss(s.reshape(6, 5), t.reshape(6, 5), 2.0)
    assert DF.kd_loss(s, t, 2.0).item() == pytest.approx(flat.item(), rel=1e-6)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    kept = DF.kd_loss(s[mask], t[mask], 2.0)
    assert DF.kd_loss(s, t, 2.0, mask=mask).item() == pytest.approx(kept.item(), rel=1e-6)
    assert DF.kd_loss(s, t, 2.0, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_kd_gradient_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    T = 2.5

    def written(s, t):
        ps = torch.exp(s / T) / torch.exp(s / T).sum(1, keepdim=True)
        pt = torch.exp(t / T) / torch.exp(t / T).sum(1, keepdim=True)
        return T**2 * (pt * (torch.log(pt) - torch.log(ps))).sum() / s.shape[0]

    ours = grads(lambda a, b: DF.kd_loss(a, b, T), s, t)
    assert torch.allclose(ours, grads(written, s, t), atol=1e-10)
    # Hinton et al. 2015, sec. 2.1: for large T the gradient is about (s - t) / (N C T^2) * T^2
    big = 1000.0
    zs, zt = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    approx = (zs - zt) / (6 * s.shape[0])
    high_t = grads(lambda a, b: DF.kd_loss(a, b, big), zs, zt)
    assert torch.allclose(high_t, approx.double(), atol=1e-4)


def test_kd_zero_when_equal_and_errors():
    t = torch.randn(3, 4)
    assert DF.kd_loss(t, t.clone()).item() == 0.0
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="temperature"):
            DF.kd_loss(t, t, temperature=bad)
    with pytest.raises(ShapeError, match=r"student \(3, 4\) and teacher \(3, 5\)"):
        DF.kd_loss(t, torch.randn(3, 5))
    with pytest.raises(ShapeError, match="class dimension"):
        DF.kd_loss(torch.randn(4), torch.randn(4))


def test_hinton_loss_alpha_weighs_the_kd_term_and_ignores_minus_100_rows():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 3, -100, 1, 2])
    T, a = 4.0, 0.7
    keep = y != -100
    soft = (
        T
        * T
        * sum(
            kl(softmax(tr, T), softmax(sr, T))
            for sr, tr, k in zip(s.tolist(), t.tolist(), keep.tolist())
            if k
        )
        / 4
    )
    hard = (
        sum(-math.log(softmax(sr)[yi]) for sr, yi in zip(s.tolist(), y.tolist()) if yi != -100) / 4
    )
    got = DF.hinton_loss(s, t, y, T, a)
    assert got.item() == pytest.approx(a * soft + (1 - a) * hard, rel=1e-6)
    assert DF.hinton_loss(s, t, None, T, 1.0).item() == pytest.approx(DF.kd_loss(s, t, T).item())
    # T^2 stays on the KD term whatever alpha is (a peer drops it when the CE weight is 0)
    assert DF.hinton_loss(s, t, y, T, 1.0).item() == pytest.approx(DF.kd_loss(s, t, T).item())
    with pytest.raises(ConfigError, match="alpha"):
        DF.hinton_loss(s, t, y, T, 1.5)
    with pytest.raises(DataError, match="no target"):
        DF.hinton_loss(s, t, None, T, 0.5)
    with pytest.raises(DataError, match="label 7 is out of range for 4 classes"):
        DF.hinton_loss(s, t, torch.tensor([0, 1, 7, 1, 2]), T, 0.5)


# --- logit MSE, hints ------------------------------------------------------------------------------


def test_logit_mse_and_hint_by_hand_and_gradient():
    s = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    t = torch.tensor([[0.0, 1.0], [0.5, 2.0]])
    assert DF.logit_mse(s, t).item() == pytest.approx((1 + 9 + 0 + 4) / 4)
    assert DF.hint_loss(s, t).item() == pytest.approx((1 + 9 + 0 + 4) / 4)
    assert torch.allclose(grads(DF.hint_loss, s, t), 2 * (s - t).double() / 4)
    assert DF.logit_mse(t, t).item() == 0.0
    with pytest.raises(ShapeError, match="same shape"):
        DF.hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))


# --- attention transfer -----------------------------------------------------------------------------


def test_attention_map_and_at_loss_by_hand():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    t = torch.tensor([[[[1.0, -1.0]]]])  # (1, 1, 1, 2): channel counts may differ
    qs = [(1 + 9) / 2, (4 + 0) / 2]
    qs = [v / math.sqrt(sum(x * x for x in qs)) for v in qs]
    qt = [1 / math.sqrt(2)] * 2
    assert DF.attention_map(s).flatten().tolist() == pytest.approx(qs)
    expected = sum((a - b) ** 2 for a, b in zip(qs, qt)) / 2
    assert DF.at_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    # p = 4: |A|^4
    q4 = [(1 + 81) / 2, (16 + 0) / 2]
    q4 = [v / math.sqrt(sum(x * x for x in q4)) for v in q4]
    assert DF.attention_map(s, p=4).flatten().tolist() == pytest.approx(q4)


def test_at_gradient_and_zero_and_errors():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)

    def written(s, t):
        qs = s.pow(2).mean(1).reshape(2, -1)
        qt = t.pow(2).mean(1).reshape(2, -1)
        qs = qs / qs.pow(2).sum(1, keepdim=True).sqrt()
        qt = qt / qt.pow(2).sum(1, keepdim=True).sqrt()
        return (qs - qt).pow(2).mean()

    assert torch.allclose(grads(DF.at_loss, s, t), grads(written, s, t), atol=1e-10)
    assert DF.at_loss(s, 3 * s).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ShapeError, match="same batch and spatial size"):
        DF.at_loss(s, torch.randn(2, 3, 2, 2))
    with pytest.raises(ShapeError, match="feature maps"):
        DF.at_loss(torch.randn(2, 3), torch.randn(2, 3))


# --- relational KD ----------------------------------------------------------------------------------


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def rkd_by_hand(s: list[list[float]], t: list[list[float]]) -> tuple[float, float]:
    n = len(s)

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    def psi_d(e):
        d = {(i, j): dist(e[i], e[j]) for i in range(n) for j in range(n) if i != j}
        mu = sum(d.values()) / len(d)
        return {k: v / mu for k, v in d.items()}

    ds, dt = psi_d(s), psi_d(t)
    dist_loss = sum(huber(ds[k] - dt[k]) for k in ds) / len(ds)

    def cos(e, i, j, k):
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        return sum(a * b for a, b in zip(u, v)) / (
            math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v))
        )

    triplets = [
        (i, j, k) for i in range(n) for j in range(n) for k in range(n) if len({i, j, k}) == 3
    ]
    ang = sum(huber(cos(s, *x) - cos(t, *x)) for x in triplets) / len(triplets)
    return dist_loss, ang


def test_rkd_by_hand():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 7, generator=g)  # sizes may differ
    d, a = rkd_by_hand(s.tolist(), t.tolist())
    assert DF.rkd_distance_loss(s, t).item() == pytest.approx(d, rel=1e-5)
    assert DF.rkd_angle_loss(s, t).item() == pytest.approx(a, rel=1e-5)
    assert DF.rkd_loss(s, t).item() == pytest.approx(25 * d + 50 * a, rel=1e-5)
    assert DF.rkd_loss(s, t, 1.0, 0.0).item() == pytest.approx(d, rel=1e-5)
    # large differences reach the linear part of the Huber loss
    s2 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.1], [0.1, 0.1]])
    t2 = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 10.0], [10.0, 10.0]])
    d2, a2 = rkd_by_hand(s2.tolist(), t2.tolist())
    assert DF.rkd_distance_loss(s2, t2).item() == pytest.approx(d2, rel=1e-5)
    assert DF.rkd_angle_loss(s2, t2).item() == pytest.approx(a2, rel=1e-5)


def test_rkd_gradient_matches_the_written_out_formula_and_zero_and_errors():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)

    def written(s, t):
        n = s.shape[0]
        total_d, total_a = 0.0, 0.0

        def psi(e):
            d = [[(e[i] - e[j]).norm() if i != j else None for j in range(n)] for i in range(n)]
            mu = sum(v for r in d for v in r if v is not None) / (n * (n - 1))
            return [[v / mu if v is not None else None for v in r] for r in d]

        ps, pt = psi(s), psi(t)
        for i in range(n):
            for j in range(n):
                if i != j:
                    total_d = total_d + F.smooth_l1_loss(ps[i][j], pt[i][j])

        def c(e, i, j, k):
            u, v = e[i] - e[j], e[k] - e[j]
            return (u @ v) / (u.norm() * v.norm())

        count = 0
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if len({i, j, k}) == 3:
                        total_a = total_a + F.smooth_l1_loss(c(s, i, j, k), c(t, i, j, k))
                        count += 1
        return 25 * total_d / (n * (n - 1)) + 50 * total_a / count

    assert torch.allclose(grads(DF.rkd_loss, s, t), grads(written, s, t), atol=1e-9)
    assert DF.rkd_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    # two identical samples: finite loss and gradient (no NaN from a zero distance)
    dup = torch.cat([s[:2], s[:1]])
    assert torch.isfinite(grads(DF.rkd_loss, dup, t[:3])).all()
    with pytest.raises(DataError, match="at least 3"):
        DF.rkd_angle_loss(s[:2], t[:2])
    with pytest.raises(ShapeError, match="same batch"):
        DF.rkd_distance_loss(s, t[:3])


# --- decoupled KD -----------------------------------------------------------------------------------


def dkd_by_hand(s: list[float], t: list[float], y: int, T: float) -> tuple[float, float]:
    ps, pt = softmax(s, T), softmax(t, T)
    tckd = kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    others = [i for i in range(len(s)) if i != y]
    ns = softmax([s[i] for i in others], T)
    nt = softmax([t[i] for i in others], T)
    return T * T * tckd, T * T * kl(nt, ns)


def test_dkd_by_hand_and_the_papers_decomposition():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    y = torch.tensor([1, 4, 0])
    T = 4.0
    hand = [dkd_by_hand(sr, tr, yi, T) for sr, tr, yi in zip(s.tolist(), t.tolist(), y.tolist())]
    tckd, nckd = DF.dkd_terms(s, t, y, T)
    assert tckd.item() == pytest.approx(sum(h[0] for h in hand) / 3, rel=1e-6)
    assert nckd.item() == pytest.approx(sum(h[1] for h in hand) / 3, rel=1e-6)
    assert DF.dkd_loss(s, t, y, 2.0, 8.0, T).item() == pytest.approx(
        2 * tckd.item() + 8 * nckd.item(), rel=1e-6
    )
    # eq. 1 of the paper, row by row: KD = TCKD + (1 - p_t,g) * NCKD
    for i in range(3):
        si, ti = s[i : i + 1].double(), t[i : i + 1].double()
        a, b = DF.dkd_terms(si, ti, y[i : i + 1], T)
        pt = softmax(t[i].tolist(), T)[int(y[i])]
        kd = DF.kd_loss(si, ti, T)
        assert kd.item() == pytest.approx(a.item() + (1 - pt) * b.item(), rel=1e-9)


def test_dkd_gradient_zero_ignored_rows_and_errors():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    y = torch.tensor([0, 5, -100, 2])
    T = 2.0

    def written(s, t):
        keep = y != -100
        s, t, yy = s[keep] / T, t[keep] / T, y[keep]
        ps, pt = s.softmax(1), t.softmax(1)
        gt = F.one_hot(yy, 6).bool()
        bs = torch.stack([ps[gt], 1 - ps[gt]], 1)
        bt = torch.stack([pt[gt], 1 - pt[gt]], 1)
        tckd = (bt * (bt.log() - bs.log())).sum(1).mean()
        ns = s[~gt].reshape(-1, 5).softmax(1)
        nt = t[~gt].reshape(-1, 5).softmax(1)
        nckd = (nt * (nt.log() - ns.log())).sum(1).mean()
        return T * T * (1.0 * tckd + 8.0 * nckd)

    ours = grads(lambda a, b: DF.dkd_loss(a, b, y, 1.0, 8.0, T), s, t)
    assert torch.allclose(ours, grads(written, s, t), atol=1e-10)
    assert ours[2].abs().max() == 0  # the -100 row takes no part
    assert DF.dkd_loss(s, s.clone(), y).item() == pytest.approx(0.0, abs=1e-12)
    assert DF.dkd_loss(s, t, torch.full((4,), -100)).item() == 0.0
    with pytest.raises(DataError, match="needs the labels"):
        DF.dkd_terms(s, t, None)
    with pytest.raises(ConfigError, match="temperature"):
        DF.dkd_terms(s, t, y, temperature=0.0)
    with pytest.raises(ShapeError, match="at least 2 classes"):
        DF.dkd_terms(s[:, :1], t[:, :1], torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="integer class labels"):
        DF.dkd_terms(s, t, torch.zeros(4))


def test_half_precision_is_upcast():
    s, t = torch.randn(4, 3).half(), torch.randn(4, 3).half()
    got = DF.kd_loss(s, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(DF.kd_loss(s.float(), t.float()).item())
