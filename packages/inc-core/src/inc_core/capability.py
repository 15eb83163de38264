"""Helpers for a backend's capability table (what its kernels run, in the core's types)."""

from __future__ import annotations

from .calibration import OBSERVERS
from .space import ALGORITHMS


def core_algorithms(*wanted: str) -> tuple[str, ...]:
    """The activation calibration algorithms among ``wanted`` (default: every one the spec
    names, minmax first) that the installed ``inc_core.calibration`` implements, in order.

    A backend whose calibration runs the core's observers lists these in its
    ``TensorOptions(algorithm=...)``, so an algorithm the core lacks is never offered.
    """
    return tuple(a for a in (wanted or ALGORITHMS) if a in OBSERVERS)
