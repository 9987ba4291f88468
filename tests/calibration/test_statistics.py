"""Each built-in statistic against a brute-force reference; a new statistic is one small class."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchcompress import layers
from torchcompress.calibration import STATISTICS, Statistic, collect
from torchcompress.layers import Geometry


def _unfold_rows(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """im2col rows (N*L, C*k*k) exactly as the convolution sees them (padding mode included)."""
    pad = conv.padding
    if conv.padding_mode != "zeros":
        x, pad = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


CONVS = [
    nn.Conv2d(4, 6, 3, padding=1),
    nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=4),
    nn.Conv2d(4, 6, (3, 2), padding=(1, 0), padding_mode="circular"),
]


def _collect(layer: nn.Module, xs: list[Tensor], names: list[str]):
    return collect(nn.Sequential(layer), xs, {"0": names})["0"]


@pytest.mark.parametrize("conv", CONVS)
def test_input_statistics_of_convolutions_match_unfolded_rows(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    conv = conv.double()
    xs = [
        torch.randn(2, 4, 7, 9, dtype=torch.float64),
        torch.randn(1, 4, 7, 9, dtype=torch.float64),
    ]
    stats = _collect(conv, xs, ["input_sq", "abs_mean", "xtx", "hessian_diag", "channel_sq"])
    rows = torch.cat([_unfold_rows(conv, x) for x in xs])  # (R, C*k*k)
    g = conv.groups
    grouped = rows.reshape(rows.shape[0], g, -1).transpose(0, 1)  # (g, R, n)
    geo = layers.geometry(conv)
    assert stats.rows == rows.shape[0] and stats.calls == 2
    torch.testing.assert_close(
        stats["input_sq"].double().reshape(-1), rows.pow(2).mean(0), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(stats["abs_mean"].reshape(-1), rows.abs().mean(0))
    xtx = grouped.transpose(1, 2) @ grouped / rows.shape[0]
    torch.testing.assert_close(stats["xtx"], xtx)
    torch.testing.assert_close(stats["hessian_diag"], 2 * torch.diagonal(xtx, dim1=1, dim2=2))
    assert stats["hessian_diag"].shape == (g, geo.n)
    # per input channel over every position of the raw input (k-means importance)
    chans = torch.cat([x.transpose(0, 1).reshape(4, -1) for x in xs], 1)
    torch.testing.assert_close(stats["channel_sq"].double(), chans.pow(2).mean(1))
    assert stats.count("channel_sq") == chans.shape[1]


def test_input_statistics_of_a_linear_layer_by_hand() -> None:
    lin = nn.Linear(3, 2)
    x1 = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    x2 = torch.tensor([[[0.0, -2.0, 2.0]]])  # 3-D input: every token is a row
    stats = _collect(lin, [x1, x2], ["input_sq", "abs_mean", "xtx", "input_min", "input_max"])
    assert stats.rows == 3 and stats.count("input_sq") == 3
    assert stats["input_sq"].tolist() == pytest.approx([10 / 3, 5 / 3, 8 / 3])
    assert stats["abs_mean"].tolist() == pytest.approx([4 / 3, 1.0, 4 / 3])
    rows = torch.cat([x1, x2.reshape(1, 3)]).double()
    torch.testing.assert_close(stats["xtx"][0], rows.t() @ rows / 3)
    assert float(stats["input_min"]) == -2.0 and float(stats["input_max"]) == 3.0


def test_ranges_per_channel_and_of_the_output() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    xs = [torch.randn(2, 3, 6, 6) for _ in range(3)]
    stats = _collect(
        conv, xs, ["input_channel_min", "input_channel_max", "output_min", "output_max"]
    )
    x = torch.cat(xs)
    assert torch.equal(stats["input_channel_min"], x.amin((0, 2, 3)))
    assert torch.equal(stats["input_channel_max"], x.amax((0, 2, 3)))
    with torch.no_grad():
        y = conv(x)
    assert float(stats["output_min"]) == float(y.min())
    assert float(stats["output_max"]) == float(y.max())


def test_accumulators_start_at_the_identity_of_their_reduction() -> None:
    geo = Geometry("linear", 4, 2)
    for name in STATISTICS:
        st = STATISTICS.get(name)(geo, torch.device("cpu"))
        fill = {"sum": 0.0, "min": float("inf"), "max": float("-inf")}[st.reduction]
        assert bool((st.acc == fill).all()) and st.count == 0, name
        assert st.observes in ("input", "output", "weight_grad")
    assert STATISTICS.get("xtx")(geo).acc.shape == (1, 4, 4)
    assert STATISTICS.get("grad_sq").per_sample and STATISTICS.get("grad_abs")(geo).needs_grad
    assert STATISTICS.get("xtx").dtype == torch.float64


def test_input_rows_come_in_bounded_chunks() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 5, 8)
    geo = Geometry("linear", 8, 3)
    chunks = list(geo.layer_kind.input_rows(geo, x, max_elements=40))
    assert len(chunks) == 64 and all(c.shape == (1, 5, 8) for c in chunks)  # 40 // 8 rows each
    xtx = STATISTICS.get("xtx")(geo)
    xtx.update(x)
    ref = x.reshape(-1, 8).double()
    torch.testing.assert_close(xtx.finalize()[0], ref.t() @ ref / 320)
    conv = Geometry("conv", 4, 2, kernel_size=(3, 3), padding=(1, 1))
    img = torch.randn(6, 4, 5, 5)
    parts = list(conv.layer_kind.input_rows(conv, img, max_elements=2 * 25 * 36))
    assert [p.shape[1] for p in parts] == [50, 50, 50]  # two samples (25 positions each) a chunk


class AbsMax(Statistic):
    """max |x| per input feature: a new statistic in a few lines."""

    reduction = "max"

    def shape(self) -> tuple[int, ...]:
        return (self.geometry.in_features,)

    def update(self, x: Tensor) -> None:
        rows = self.geometry.layer_kind.channel_rows(self.geometry, x.detach()).abs()
        self.acc = torch.maximum(self.acc, rows.amax(0).to(self.dtype))
        self.count += rows.shape[0]


def test_a_new_statistic_is_one_small_class() -> None:
    STATISTICS.add("test_abs_max", AbsMax, overwrite=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    xs = [torch.randn(5, 4) for _ in range(3)]
    stats = collect(model, xs, {"0": ["test_abs_max"], "2": ["test_abs_max", "input_sq"]})
    assert torch.equal(stats["0"]["test_abs_max"], torch.cat(xs).abs().amax(0))
    assert stats["2"]["test_abs_max"].shape == (3,) and stats["2"].count("test_abs_max") == 15
