"""Accuracy-aware tuning strategies: each proposes plans over a ``TuningSpace`` (see ``base``);
``registry`` finds them, inc's own and those installed through the ``inc.strategies`` entry points."""

from __future__ import annotations

from . import registry
from .base import Batch, Outcome, Probe, Strategy
from .space import TuningSpace

#: inc's own strategies by name (``registry.available()`` adds the installed ones)
STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in registry.BUILTIN}

__all__ = ["STRATEGIES", "Batch", "Outcome", "Probe", "Strategy", "TuningSpace", "registry"]
