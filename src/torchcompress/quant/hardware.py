"""What the integer kernels of this machine can do exactly.

On x86 CPUs without VNNI (AVX2, and AVX-512 without ``avx512_vnni``), the int8 kernels of
fbgemm and oneDNN multiply u8 activations by s8 weights with ``vpmaddubsw``, which adds each pair of
adjacent products in a *saturating* int16. Full-range 8-bit activations (``0..255``) with full-range
8-bit weights (``-128..127``) can overflow it (``2 * 255 * 128 > 32767``): outputs land up to a dozen
steps away from the exact result. Keeping one operand to 7 bits (``2 * 255 * 64`` or
``2 * 127 * 128``, both ``<= 32767``) makes every result exact. With VNNI (``vpdpbusd`` accumulates in
int32) or AMX there is no such limit.
"""

from __future__ import annotations

import functools
import platform

import torch

__all__ = ["cpu_flags", "int8_pairs_exact", "int8_saturates", "resolve_reduce_range"]

_INT16_MAX = 32767


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") or line.startswith("Features"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def int8_saturates() -> bool:
    """Whether this CPU's u8·s8 int8 kernels saturate pairs of products in int16 (x86 without VNNI)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags()
    if not flags:  # unknown: be safe
        try:
            cap = torch.backends.cpu.get_cpu_capability()
        except Exception:  # older torch
            cap = ""
        return "VNNI" not in cap.upper()
    return not ({"avx512_vnni", "amx_int8"} & flags)


def int8_pairs_exact(act_levels: int, w_qmin: int, w_qmax: int, device: torch.device) -> bool:
    """Whether a u8·s8 kernel is exact for activations stored in ``[0, act_levels - 1]``."""
    if device.type != "cpu" or not int8_saturates():
        return True
    w = max(abs(w_qmin), abs(w_qmax))
    return 2 * (act_levels - 1) * w <= _INT16_MAX


def resolve_reduce_range(setting: str, device: torch.device | None) -> str:
    """``"auto"`` -> ``"weight"`` on CPUs whose int8 kernels saturate, else ``"none"``."""
    if setting != "auto":
        return setting
    if device is not None and device.type != "cpu":
        return "none"
    return "weight" if int8_saturates() else "none"
