"""CPU features that change the default quantization settings."""

from __future__ import annotations

import functools
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def has_vnni(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has VNNI int8 dot products.

    Without VNNI, int8 kernels go through 16-bit intermediates (vpmaddubsw) that can saturate on
    8-bit activations; 7-bit activations (``reduce_range``) avoid that. Unknown CPUs
    (no /proc/cpuinfo) are treated as lacking VNNI: reduced range is safe everywhere.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in VNNI_FLAGS)


def default_reduce_range(requested: bool | None) -> bool:
    """The user's ``reduce_range``, or on exactly when the CPU lacks VNNI."""
    return (not has_vnni()) if requested is None else requested
