"""Interleaved latency comparisons against the fp32 model, for the speed guard.

A loaded machine slows whatever runs while the load lasts, so a model is never timed alone:
each round times the fp32 model and then the candidate, and the decision rests on the median
of the per-round ratios (candidate / fp32). One slow round moves the median little; a load
that lasts for a whole measurement slows both models of each round alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .backend import Backend

#: rounds per measurement, and ``latency`` calls of the batch per model per round
ROUNDS = 5
CALLS = 3
#: seconds of runs per model per round: a batch that takes longer runs once per round (a big
#: model at batch 8 takes ~0.4 s: three runs per round would cost more than quantizing it)
LONG_RUN = 0.1
#: a measurement may stop after this many rounds when all of them are CLEAR away from the margin
MIN_ROUNDS = 2
CLEAR = 0.15
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


def _clear(ratios: Sequence[float], margin: float = NOT_FASTER) -> bool:
    """Every ratio at least ``CLEAR`` below or above ``margin``, all on the same side."""
    return all(r <= margin * (1 - CLEAR) for r in ratios) or all(
        r >= margin * (1 + CLEAR) for r in ratios
    )


class Bench:
    """Times candidates against ``fp32`` on one batch through ``backend.latency``.

    No separate warm-up run: a slow first round (session creation, kernel selection) is one
    ratio among several and the median leaves it out. ``latency`` raising
    ``NotImplementedError`` propagates: the guard reports it and skips.
    """

    def __init__(self, backend: Backend, fp32: Any, batch: Any, calls: int = CALLS) -> None:
        self.backend = backend
        self.fp32 = fp32
        self.batch = batch
        self.want_calls = calls
        #: decided by the first fp32 run: ``calls`` copies of the batch, or one for a long run
        self.inputs: Sequence[Any] | None = None
        self.calls = 0

    def _fp32(self) -> float:
        """fp32's seconds per batch for one round. The first call runs the batch once and
        sets the runs per round: enough for ``LONG_RUN`` seconds, at most ``calls`` (a long
        run is its own median; three runs of a 0.4 s model would cost more than quantizing
        it); a short one is timed again with that many runs."""
        self.calls += 1
        if self.inputs is None:
            once = float(self.backend.latency(self.fp32, [self.batch]))
            runs = min(self.want_calls, max(1, math.ceil(LONG_RUN / max(once, 1e-9))))
            self.inputs = [self.batch] * runs
            if runs == 1:
                return once
            self.calls += 1
        return float(self.backend.latency(self.fp32, self.inputs))

    def time(self, model: Any, rounds: int = ROUNDS, margin: float = NOT_FASTER) -> Timing:
        """Interleaved rounds; after ``MIN_ROUNDS`` it stops early when every ratio so far is
        clearly on one side of ``margin``, the ratio the caller decides by (more rounds could
        not change the decision)."""
        timing = Timing()
        for _ in range(rounds):
            timing.fp32.append(self._fp32())
            assert self.inputs is not None
            timing.model.append(float(self.backend.latency(model, self.inputs)))
            self.calls += 1
            if len(timing.fp32) >= MIN_ROUNDS and _clear(timing.ratios, margin):
                break
        return timing

    def confirmed(self, model: Any, first: Timing, slower_than: float) -> tuple[bool, Timing]:
        """Whether a second measurement again puts ``model`` at ratio >= ``slower_than`` (the
        first said so). Returns the answer and the timing to report: both measurements merged
        when they agree, else the second (the first was a busy stretch)."""
        second = self.time(model, margin=slower_than)
        agree = second.ratio >= slower_than
        return agree, first + second if agree else second

    def confirmed_below(self, model: Any, first: Timing, limit: float) -> tuple[bool, Timing]:
        """Whether a second measurement again puts ``model`` at ratio <= ``limit``."""
        second = self.time(model, margin=limit)
        agree = second.ratio <= limit
        return agree, first + second if agree else second
