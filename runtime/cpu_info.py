"""What this CPU is, for benchmark reports and for choosing kernels: its model name and its flags.

Read from Linux's ``/proc/cpuinfo``; elsewhere the name falls back to ``platform`` and no flag is set.
"""
from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


def _lines(cpuinfo: str = CPUINFO) -> list[str]:
    try:
        return Path(cpuinfo).read_text(errors="replace").splitlines()
    except OSError:
        return []


def cpu_model(cpuinfo: str = CPUINFO) -> str:
    """The CPU's marketing name (x86 ``model name``; ``Hardware``/``Model`` on Arm boards such as Jetsons)."""
    for line in _lines(cpuinfo):
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Hardware", "Model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The first core's feature flags (``amx_int8``, ``avx512_vnni``, ...); empty where unknown."""
    for line in _lines(cpuinfo):
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
