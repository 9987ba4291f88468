"""fusion.surgery: a folded pair computes what the pair did; what cannot be folded is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    UnsupportedModuleError,
)
from torchcompress.fusion import fuse_conv_bn

from .conftest import check_fused, n_bn, randomize_bn


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("make", "bn", "shape"),
    [
        (lambda b: nn.Conv2d(4, 8, 3, padding=1, bias=b), nn.BatchNorm2d, (2, 4, 7, 7)),
        (lambda b: nn.Conv2d(8, 8, 3, groups=8, bias=b), nn.BatchNorm2d, (2, 8, 7, 7)),  # depthwise
        (lambda b: nn.Conv2d(8, 12, 3, groups=4, stride=2, bias=b), nn.BatchNorm2d, (2, 8, 9, 9)),
        (lambda b: nn.Conv1d(3, 6, 5, dilation=2, bias=b), nn.BatchNorm1d, (2, 3, 20)),
        (lambda b: nn.Linear(5, 7, bias=b), nn.BatchNorm1d, (6, 5)),
        (lambda b: nn.Conv3d(2, 4, 3, bias=b), nn.BatchNorm3d, (1, 2, 5, 5, 5)),
    ],
)
def test_fused_pair_matches_unfused(make, bn, shape, bias, affine) -> None:
    torch.manual_seed(0)
    layer = make(bias)
    model = randomize_bn(nn.Sequential(layer, bn(layer.weight.shape[0], affine=affine), nn.ReLU()))
    check_fused(model, torch.randn(*shape))
    assert isinstance(model[1], nn.Identity)
    assert type(model[0]) is type(layer) and model[0].bias is not None
    assert n_bn(model) == 0


def test_fuse_conv_bn_keeps_hyperparameters() -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, padding_mode="reflect")
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    fused = fuse_conv_bn(conv, bn)
    x = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    assert fused.padding_mode == "reflect" and fused.groups == 2 and fused.stride == (2, 2)
    with pytest.raises(UnsupportedModuleError, match="running statistics"):
        fuse_conv_bn(conv, nn.BatchNorm2d(6, track_running_stats=False))
    with pytest.raises(UnsupportedModuleError, match="channels"):
        fuse_conv_bn(conv, nn.BatchNorm2d(5))


def test_fp16_and_bf16_models() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).to(dtype).eval()
        x = torch.randn(1, 3, 6, 6, dtype=dtype)
        with torch.no_grad():
            ref = model(x).float()
        tc.fuse(model)
        assert model[0].weight.dtype == dtype
        with torch.no_grad():
            torch.testing.assert_close(model(x).float(), ref, rtol=3e-2, atol=3e-2)


def test_compressed_and_hooked_layers_are_skipped() -> None:
    class WrappedConv(nn.Conv2d):  # a subclass may compute something else
        pass

    model = nn.Sequential(
        WrappedConv(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    randomize_bn(model)
    from torch.nn.utils import prune

    prune.l1_unstructured(model[2], "weight", amount=0.5)  # a hooked, masked conv
    check_fused(model, torch.randn(1, 3, 4, 4))
    assert n_bn(model) == 2
    with pytest.raises(UnsupportedModuleError, match="not a plain"):
        tc.fuse(model, pairs=[("0", "1")])
    with pytest.raises(UnsupportedModuleError, match="hooks"):
        tc.fuse(model, pairs=[("2", "3")])


def test_bn_without_running_stats_is_left_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    tc.fuse(model)
    assert isinstance(model[1], nn.BatchNorm2d)
