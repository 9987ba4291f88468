"""Versions and machine of a run, for reports (CPU capability included: results depend on it).

Example:
    >>> from torchcompress.report import environment
    >>> env = environment()
    >>> sorted(env), "torch" in env["versions"], "cpu_capability" in env["machine"]
    (['machine', 'versions'], True, True)
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import torch

__all__ = ["environment", "machine_line"]

_OPTIONAL = ("numpy", "transformers", "onnxruntime", "matplotlib", "scikit-learn")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """``{"versions": {...}, "machine": {...}}`` of this process.

    Versions: torchcompress, torch, Python and the optional packages that are installed. Machine:
    platform, CPU model, cores, torch threads, torch's CPU capability (``AVX2``, ``AVX512``, ...)
    and the CUDA device if any.
    """
    from .._version import __version__

    versions: dict[str, str] = {
        "torchcompress": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    for pkg in _OPTIONAL:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = "unknown"
    machine = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": capability,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return {"versions": versions, "machine": machine}


def machine_line(env: dict[str, Any] | None = None) -> str:
    """One line: CPU (cores, threads, capability), GPU, torch and Python versions."""
    env = env or environment()
    m, v = env["machine"], env["versions"]
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ""
    return (
        f"{m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads, "
        f"{m['cpu_capability']}){gpu}; torch {v['torch']}, Python {v['python']}"
    )
