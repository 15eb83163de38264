"""Accuracy-aware tuning strategies: each proposes plans over a ``TuningSpace`` (see ``base``)."""

from __future__ import annotations

from .auto import AutoStrategy
from .base import Batch, Outcome, Probe, Strategy
from .basic import BasicStrategy
from .bayesian import BayesianStrategy
from .conservative import ConservativeStrategy
from .exhaustive import ExhaustiveStrategy
from .mse import MseStrategy
from .mse_v2 import MseV2Strategy, SensitivityStrategy
from .random import RandomStrategy
from .space import TuningSpace

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s
    for s in (
        AutoStrategy,
        ConservativeStrategy,
        BasicStrategy,
        MseStrategy,
        MseV2Strategy,
        SensitivityStrategy,
        BayesianStrategy,
        ExhaustiveStrategy,
        RandomStrategy,
    )
}

__all__ = ["STRATEGIES", "Batch", "Outcome", "Probe", "Strategy", "TuningSpace"]
