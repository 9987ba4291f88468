"""The layer model: canonical views, functional forward, MACs and input rows, on random geometries."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import torchcompress as tc
from torchcompress import layers
from torchcompress.errors import ConfigError, UnsupportedModuleError
from torchcompress.layers import LAYER_KINDS, Geometry, LinearKind, conv_input_sq, layer_kind

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@st.composite
def convs(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    """A random convolution (1-3-D, grouped, strided, dilated, any padding and mode) and an input."""
    dims = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    d = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding: str | tuple[int, ...] = draw(
        st.one_of(st.sampled_from(["same", "valid"]), st.tuples(*[st.integers(0, 2)] * dims))
    )
    s = (1,) * dims if padding == "same" else tuple(draw(st.integers(1, 3)) for _ in range(dims))
    mode = draw(st.sampled_from(layers.PADDING_MODES))
    conv = CONV[dims](
        cin,
        cout,
        k,
        stride=s,
        padding=padding,
        dilation=d,
        groups=groups,
        bias=draw(st.booleans()),
        padding_mode=mode,
    ).double()
    # every spatial size larger than the padding (reflect) and at least one kernel extent
    sizes = [dd * (kk - 1) + 1 + draw(st.integers(2, 4)) for kk, dd in zip(k, d)]
    batch = draw(st.sampled_from([None, 1, 2]))  # None: an unbatched input
    shape = (cin, *sizes) if batch is None else (batch, cin, *sizes)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return conv, x


def _hf_conv1d(nx: int = 5, nf: int = 7) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    return Conv1D(nf, nx).double()


def _linears() -> list[tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        (nn.Linear(5, 3).double(), torch.randn(4, 5, dtype=torch.float64)),
        (nn.Linear(6, 4, bias=False).double(), torch.randn(2, 3, 6, dtype=torch.float64)),
        (nn.Linear(3, 2).double(), torch.randn(3, dtype=torch.float64)),  # unbatched
        (_hf_conv1d(), torch.randn(2, 3, 5, dtype=torch.float64)),
    ]


def _rows(geo: Geometry, x: torch.Tensor, chunk: int = 1 << 23) -> torch.Tensor:
    chunks = list(geo.layer_kind.input_rows(geo, x, max_elements=chunk))
    return torch.cat(chunks, 1)  # (groups, rows, n)


def _output_rows(geo: Geometry, y: torch.Tensor) -> torch.Tensor:
    """The output as (positions, out): channels last."""
    if geo.spatial_dims == 0:
        return y.reshape(-1, geo.out_features)
    if y.dim() == geo.spatial_dims + 1:
        y = y.unsqueeze(0)
    return y.movedim(1, -1).reshape(-1, geo.out_features)


def _check_layer(module: nn.Module, x: torch.Tensor, chunk: int) -> None:
    kind = layer_kind(module)
    assert kind is not None
    geo = layers.geometry(module)
    w = layers.canonical_weight(module)
    # canonical view and its inverse
    assert tuple(w.shape) == geo.weight_shape == kind.canonical_shape(module)
    assert torch.equal(kind.from_canonical(module, w), module.weight)
    assert Geometry.from_dict(geo.to_dict()) == geo
    assert geo.matrices(w).shape == geo.grouped_shape
    assert torch.equal(geo.from_matrices(geo.matrices(w)), w)
    assert math.prod(geo.matrix_shape) == w.numel()
    # the functional forward is the module's own
    y = module(x)
    assert torch.equal(layers.forward(geo, x, w, module.bias), y)
    # input rows x W^T reproduce the output, in bounded chunks
    rows = _rows(geo, x, chunk)
    out = rows @ geo.matrices(w).transpose(1, 2)  # (groups, positions, m)
    out = out.transpose(0, 1).reshape(-1, geo.out_features)
    ref = _output_rows(geo, y - (0 if module.bias is None else _bias_view(geo, module.bias, y)))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # MACs: the multiply-adds of that unfolded matmul, and tc.profile's independent count
    positions = geo.output_positions(y)
    assert positions == rows.shape[1]
    assert geo.macs(positions) == rows.shape[0] * rows.shape[1] * geo.m * geo.n
    if x.dim() > (1 if geo.spatial_dims == 0 else geo.spatial_dims + 1):  # profile needs a batch
        assert tc.profile(nn.Sequential(module), x)["0"].macs == geo.macs(positions)
    # per-feature sums (no unfolding) equal the unfolded rows' column sums
    for power in (1, 2):
        sums, n = kind.feature_sums(geo, x, power, torch.float64)
        cols = rows.abs().pow(power).sum(1)  # (groups, n): group g holds its channel block
        torch.testing.assert_close(sums.reshape(-1), cols.reshape(-1), rtol=1e-9, atol=1e-9)
        assert n == positions
    # the input with channels last
    chans = kind.channel_rows(geo, x)
    assert chans.shape[1] == geo.in_features
    torch.testing.assert_close(chans.pow(2).sum(), x.pow(2).sum())


def _bias_view(geo: Geometry, bias: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if geo.spatial_dims == 0:
        return bias
    return bias.reshape(-1, *[1] * geo.spatial_dims)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@SETTINGS
@given(convs(), st.sampled_from([64, 1 << 23]))
def test_random_convolutions(case: tuple[nn.Module, torch.Tensor], chunk: int) -> None:
    conv, x = case
    _check_layer(conv, x, chunk)


@pytest.mark.parametrize("index", range(4))
def test_linear_and_hf_conv1d(index: int) -> None:
    module, x = _linears()[index]
    _check_layer(module, x, 7)


def test_hf_conv1d_is_seen_transposed_and_recognised_when_masked() -> None:
    c = _hf_conv1d(nx=3, nf=5)
    kind = layer_kind(c)
    assert kind is LAYER_KINDS.get("hf_conv1d") and kind.weight_axes == (1, 0)
    geo = layers.geometry(c)
    assert (geo.in_features, geo.out_features, geo.weight_shape) == (3, 5, (5, 3))
    torch.testing.assert_close(layers.canonical_weight(c), c.weight.t())

    class Half(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w / 2

    parametrize.register_parametrization(c, "weight", Half())
    assert type(c).__name__ == "ParametrizedConv1D" and layers.is_hf_conv1d(c)
    assert layers.stored_weight(c).shape == (3, 5)  # the original, not recomputed
    torch.testing.assert_close(layers.canonical_weight(c), layers.stored_weight(c).t() / 2)


def test_a_class_named_conv1d_elsewhere_is_not_hf() -> None:
    class Conv1D(nn.Linear):  # the name matters
        pass

    assert not layers.is_hf_conv1d(Conv1D(2, 2))
    assert layer_kind(Conv1D(2, 2)) is LAYER_KINDS.get("linear")  # still a Linear


def test_geometry_fields_and_derived_values() -> None:
    g = Geometry("conv", 6, 9, kernel_size=(3, 1), stride=2, padding=(1, 0), groups=3, bias=True)
    assert g.stride == (2, 2) and g.dilation == (1, 1) and g.pads == ((1, 1), (0, 0))
    assert (g.m, g.n, g.taps) == (3, 6, 3)
    assert g.weight_shape == (9, 2, 3, 1) and g.matrix_shape == (9, 6)
    assert g.feature_shape == (6, 3, 1) and g.params == 9 * 6 + 9
    assert g.output_size((7, 5)) == (4, 3)
    same = Geometry("conv", 2, 2, kernel_size=(4,), dilation=(2,), padding="same")
    assert same.pads == ((3, 3),)  # 2 * (4 - 1) = 6, split evenly
    even = Geometry("conv", 2, 2, kernel_size=(2,), padding="same")
    assert even.pads == ((0, 1),)  # torch puts the odd pixel after
    lin = Geometry("linear", 4, 3)
    assert lin.spatial_dims == 0 and lin.weight_shape == (3, 4) and lin.macs(5) == 60
    stat = torch.arange(18.0).reshape(6, 3, 1)
    expanded = g.expand_features(stat)
    assert expanded.shape == g.weight_shape
    assert torch.equal(expanded[4], stat[2:4])  # output 4 is in group 1: channels 2-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": 4}, "divisible by groups"),
        ({"padding": "full"}, "'same' or 'valid'"),
        ({"stride": (1, 2, 3)}, "one entry per spatial"),
        ({"padding_mode": "mirror"}, "padding_mode"),
        ({"kernel_size": (3, 1.5)}, "must hold ints"),
    ],
)
def test_bad_geometries_are_config_errors(kwargs: dict, match: str) -> None:
    base = {"kind": "conv", "in_features": 6, "out_features": 6, "kernel_size": (3, 3)}
    with pytest.raises(ConfigError, match=match):
        Geometry(**{**base, **kwargs})
    with pytest.raises(ConfigError, match="no field"):
        Geometry.from_dict({**base, "kernel": 3})


def test_unsupported_module_names_it_and_lists_the_kinds() -> None:
    with pytest.raises(
        UnsupportedModuleError, match=r"'norm' \(LayerNorm\).*'linear', 'hf_conv1d'"
    ):
        layers.geometry(nn.LayerNorm(4), "norm")
    assert layer_kind(nn.ConvTranspose2d(2, 2, 3)) is None  # not a plain convolution


def test_latest_registered_kind_wins_and_supported_types_follow_the_model() -> None:
    class Tied(nn.Linear):
        """A Linear whose map is described by another kind."""

    class TiedKind(LinearKind):
        types = (Tied,)

    LAYER_KINDS.add("test_tied_linear", TiedKind(), overwrite=True)
    assert isinstance(layer_kind(Tied(2, 2)), TiedKind)
    assert layer_kind(nn.Linear(2, 2)) is LAYER_KINDS.get("linear")
    assert layers.geometry(Tied(2, 3)).kind == "test_tied_linear"
    assert Tied in layers.supported_types()
    assert nn.Conv3d in layers.supported_types()
    model = nn.Sequential(_hf_conv1d())
    assert type(model[0]) in layers.supported_types(model)


def test_conv_input_sq_with_asymmetric_padding() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9)
    sq, rows = conv_input_sq(x, (2,), (1,), [(0, 1)], (1,))  # 'same' for an even kernel
    cols = F.unfold(F.pad(x, (0, 1)).unsqueeze(-1), (2, 1))
    torch.testing.assert_close(sq.reshape(-1), cols.pow(2).sum((0, 2)))
    assert rows == 2 * 9


@pytest.mark.parametrize("name", ["", ".base", ".builtin"])
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    mod = importlib.import_module("torchcompress.layers" + name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
