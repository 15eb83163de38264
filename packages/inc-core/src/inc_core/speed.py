"""Interleaved latency comparisons against the fp32 model, for the speed guard.

A loaded machine slows whatever runs while the load lasts, so a model is never timed alone:
each round times the fp32 model and then the candidate, and the decision rests on the median
of the per-round ratios (candidate / fp32). One slow round moves the median little; a load
that lasts for a whole measurement slows both models of each round alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend

#: rounds per measurement, and ``latency`` calls of the batch per model per round
ROUNDS = 5
CALLS = 3
#: int8 counts as "not faster" at >= 97% of fp32's time, a margin above the few percent
#: by which medians of the same model drift between rounds on a busy 2-core machine
NOT_FASTER = 0.97
#: a candidate replaces the current model only when it takes <= 97% of its time (same reason)
IMPROVES = 0.97


@dataclass
class Timing:
    """Seconds per batch of the fp32 model and of one candidate, one entry per round."""

    fp32: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [
            m / f if f > 0 else float("inf") for f, m in zip(self.fp32, self.model, strict=True)
        ]

    @property
    def ratio(self) -> float:
        """Median of the per-round ratios: < 1 means the candidate is faster."""
        return float(statistics.median(self.ratios))

    @property
    def fp32_ms(self) -> float:
        return float(statistics.median(self.fp32)) * 1e3

    @property
    def model_ms(self) -> float:
        return float(statistics.median(self.model)) * 1e3

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.fp32 + other.fp32, self.model + other.model)


class Bench:
    """Times candidates against ``fp32`` on one batch through ``backend.latency``.

    ``latency`` raising ``NotImplementedError`` propagates: the guard reports it and skips.
    """

    def __init__(self, backend: Backend, fp32: Any, batch: Any, calls: int = CALLS) -> None:
        self.backend = backend
        self.fp32 = fp32
        self.inputs: Sequence[Any] = [batch] * calls
        # first runs create sessions, pick kernels and fill caches: not the model's speed
        backend.latency(fp32, [batch])
        self.calls = 1

    def time(self, model: Any, rounds: int = ROUNDS) -> Timing:
        self.backend.latency(model, self.inputs[:1])  # warm-up, as for fp32
        self.calls += 1
        timing = Timing()
        for _ in range(rounds):
            timing.fp32.append(float(self.backend.latency(self.fp32, self.inputs)))
            timing.model.append(float(self.backend.latency(model, self.inputs)))
            self.calls += 2
        return timing

    def confirmed(self, model: Any, first: Timing, slower_than: float) -> tuple[bool, Timing]:
        """Whether ``model`` measures at ratio >= ``slower_than`` again in a second measurement
        (the first one said so); returns the answer and both measurements merged."""
        second = self.time(model)
        return second.ratio >= slower_than, first + second

    def confirmed_below(self, model: Any, first: Timing, limit: float) -> tuple[bool, Timing]:
        """Whether ``model`` measures at ratio <= ``limit`` again in a second measurement."""
        second = self.time(model)
        return second.ratio <= limit, first + second
