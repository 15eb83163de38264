"""Interleaved latency comparisons against the fp32 model, for the speed guard.

A loaded machine slows whatever runs while the load lasts, so a model is never timed alone:
each round times the fp32 model and then the candidate. Load only ever slows a run, so each
model's time is its best round, and the ratio is best over best (a busy stretch that hits
only one model's runs in a round, which moves a per-round ratio anywhere, leaves the best
rounds alone; a load that lasts the whole measurement slows both models alike).

A decision is a sequential test (``verdict``): rounds go on until the ratio is clearly on
one side of the limit the caller decides by -- by a dead band, and by the uncertainty that
the gap between each model's two best rounds shows (a best round that no other round comes
near to may be the busy one of the other model's) -- or the rounds run out. Rounds that
cannot tell give a tie (``None``), and every caller treats a tie the same way (as "no
change"), so the same model on a busy machine gets the same answer instead of whichever side
of the line its measurement happened to fall on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .backend import Backend

#: rounds per measurement at most, and ``latency`` calls of the batch per model per round
ROUNDS = 5
CALLS = 3
#: seconds of runs per model per round: a batch that takes longer runs once per round. Several
#: runs per round only smooth a short run's timer and scheduling jitter; a run of 30 ms is
#: past that, and the best of the rounds leaves a busy run out anyway. (At 0.1 s opennsfw's
#: fp32 batch, 80 ms, ran twice per round: the speed guard cost 0.7 s of a 4.2 s fit.)
LONG_RUN = 0.03
#: a measurement decides after this many rounds at the earliest: the two best of 3 rounds are
#: both from a busy stretch only when all 3 runs of a model were (with 2 rounds, one run in 10
#: slowed makes that 1 in 100 measurements)
MIN_ROUNDS = 3
#: the dead band around the limit, as a share of it: before ``ROUNDS`` rounds a decision needs
#: the median EARLY_BAND away (a few rounds can share one quiet or busy stretch); after them
#: BAND away, about the drift of medians of one model between measurements on a busy 2-core
#: machine
EARLY_BAND = 0.10
BAND = 0.03
#: the ratio must also be this many times its uncertainty away (from the two best rounds)
Z = 2.0
#: int8 counts as "not faster" at >= 97% of fp32's time, a margin above the few percent
#: by which medians of the same model drift between rounds on a busy 2-core machine
NOT_FASTER = 0.97
#: a candidate replaces the current model only when it takes <= 97% of its time (same reason)
IMPROVES = 0.97
Verdict = Literal["below", "above"]


def best_ratio(fp32: Sequence[float], model: Sequence[float]) -> float:
    """The candidate's best round over fp32's best round (< 1: the candidate is faster)."""
    best = min(fp32, default=0.0)
    return min(model, default=0.0) / best if best > 0 else float("inf")


def verdict(
    fp32: Sequence[float], model: Sequence[float], limit: float, final: bool = False
) -> Verdict | None:
    """Where ``best_ratio`` of the rounds (seconds per batch of each model, one entry per
    round) lies against ``limit``: ``"below"``, ``"above"``, or ``None`` while the rounds
    cannot tell (a tie when ``final``: no more rounds will come).

    The ratio must be away from ``limit`` by the dead band (``EARLY_BAND`` before the last
    round, ``BAND`` at it) and by ``Z`` times its uncertainty: the relative gaps between each
    model's best and second-best rounds, combined. Rounds slowed at random leave two best
    rounds that agree; a best round that is the only quiet one (or the only busy-free one of a
    model whose other rounds all ran busy) stands alone and widens the gap, so more rounds
    run. A pure function of the numbers: the unit tests feed it noisy sequences.
    """
    n = min(len(fp32), len(model))
    if n < MIN_ROUNDS or not math.isfinite(limit):
        return None
    f, m = sorted(fp32[:n]), sorted(model[:n])
    if f[0] <= 0 or m[0] <= 0:
        return None  # a clock that did not move: nothing to tell
    ratio = m[0] / f[0]
    spread = ratio * math.hypot(f[1] / f[0] - 1, m[1] / m[0] - 1)
    half = max((BAND if final else EARLY_BAND) * limit, Z * spread)
    if ratio <= limit - half:
        return "below"
    if ratio >= limit + half:
        return "above"
    return None


@dataclass
class Timing:
    """Seconds per batch of the fp32 model and of one candidate, one entry per round."""

    fp32: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    #: the sequential test's answer against ``limit``, the ratio the rounds were measured for
    verdict: Verdict | None = None
    limit: float | None = None

    @property
    def ratios(self) -> list[float]:
        return [
            m / f if f > 0 else float("inf") for f, m in zip(self.fp32, self.model, strict=True)
        ]

    @property
    def ratio(self) -> float:
        """``best_ratio``: < 1 means the candidate is faster."""
        return best_ratio(self.fp32, self.model)

    @property
    def fp32_ms(self) -> float:
        """fp32's best round, in milliseconds."""
        return min(self.fp32, default=0.0) * 1e3

    @property
    def model_ms(self) -> float:
        return min(self.model, default=0.0) * 1e3

    def against(self, limit: float) -> Verdict | None:
        """The verdict against ``limit``: the measured one for its own limit, else these
        rounds judged against it (no more rounds will come: final)."""
        if limit == self.limit:
            return self.verdict
        return verdict(self.fp32, self.model, limit, final=True)

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.fp32 + other.fp32, self.model + other.model, limit=self.limit)


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
        #: the inputs of one model's turn in a round: ``calls`` copies of the batch, or fewer
        #: for a long run; decided by the first fp32 run
        self.inputs: list[Any] = []
        self.calls = 0

    def _fp32(self) -> float:
        """fp32's seconds per batch for one round. The first call runs the batch once and
        sets the runs per round: enough for ``LONG_RUN`` seconds, at most ``calls`` (a long
        run is its own median; three runs of a 0.4 s model would cost more than quantizing
        it); a short one is timed again with that many runs."""
        self.calls += 1
        if not self.inputs:
            once = float(self.backend.latency(self.fp32, [self.batch]))
            runs = min(self.want_calls, max(1, math.ceil(LONG_RUN / max(once, 1e-9))))
            self.inputs = [self.batch] * runs
            if runs == 1:
                return once
            self.calls += 1
        return float(self.backend.latency(self.fp32, self.inputs))

    def time(
        self, model: Any, limit: float = NOT_FASTER, rounds: int = ROUNDS, below: bool = False
    ) -> Timing:
        """Interleaved rounds until ``verdict`` decides against ``limit`` (the ratio the
        caller decides by), at most ``rounds``; the answer is in ``Timing.verdict``.

        ``below``: only a "below" verdict matters to the caller (a candidate is kept only when
        faster), so rounds stop at ``MIN_ROUNDS`` when the best rounds are not below ``limit``
        at all: more rounds would only tell a tie from "above" (on PicoDet and basic-pitch the
        candidates that tied took 5 rounds each, a third of the speed search's time)."""
        timing = Timing(limit=limit)
        for done in range(1, rounds + 1):
            timing.fp32.append(self._fp32())
            timing.model.append(float(self.backend.latency(model, self.inputs)))
            self.calls += 1
            timing.verdict = verdict(timing.fp32, timing.model, limit, final=done == rounds)
            if timing.verdict is not None:
                break
            if below and done >= MIN_ROUNDS and timing.ratio >= limit:
                break
        return timing

    def decide(self, model: Any, limit: float, act: Verdict) -> Timing:
        """``time``, and when its verdict is ``act`` (the side the caller acts on: "above"
        puts ops in fp32, "below" keeps a candidate) a second measurement: one busy stretch
        must not make the guard act. Returns both merged when the second agrees, else the
        second alone (the first was the busy stretch); ``verdict`` is the answer."""
        first = self.time(model, limit, below=act == "below")
        if first.verdict != act:
            return first
        second = self.time(model, limit, below=act == "below")
        if second.verdict != act:
            return second
        merged = first + second
        merged.verdict = act
        return merged
