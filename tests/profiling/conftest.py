"""Shared helpers of the profiling tests."""

from __future__ import annotations

from torch import nn

import torchcompress as tc


class Fn(nn.Module):
    """A module running an arbitrary functional expression (no parameters)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def macs_of(fn, *inputs) -> int:
    return tc.profile(Fn(fn), tuple(inputs)).total_macs


def _mha_expected(n, L, S, E, kdim, vdim, extra=0) -> int:
    return n * (L * E * E + S * kdim * E + S * vdim * E + 2 * L * (S + extra) * E + L * E * E)
