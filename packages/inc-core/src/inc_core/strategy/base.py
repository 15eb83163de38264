"""The strategy interface, and the tuning space strategies search.

A strategy is a generator. It yields a ``Batch`` of candidate plans and receives back one
``Outcome`` per plan that was evaluated, in order (a prefix of the batch when evaluation stopped
early). The tuner owns everything else: evaluation (serial or on an executor), the trial budget,
the timeout, history and resume. Plans inside one batch must not depend on each other's results,
which is what lets the tuner evaluate them in parallel and still decide exactly as a serial run.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..space import QuantPlan
from .space import TuningSpace


@dataclass(frozen=True)
class Outcome:
    """What a strategy learns about one evaluated plan.

    ``passed`` means the candidate qualifies: the accuracy goal is met and, under the latency
    guard, it is not slower than fp32. ``loss`` is in the criterion's unit; ``inf`` when the
    candidate failed inside the backend (``error`` says why).
    """

    plan: QuantPlan
    accuracy: float | None
    loss: float
    passed: bool
    error: str | None = None


@dataclass(frozen=True)
class Batch:
    """Candidate plans whose evaluation does not depend on each other's results.

    ``until_pass``: the plans are ordered so that after the first pass the rest are pointless
    (growing fallback); evaluation stops there. ``ends_on_pass``: with ``timeout=0`` the first
    pass in this batch ends tuning (a strategy that accumulates passes sets it False).
    """

    plans: Sequence[QuantPlan]
    phase: str
    until_pass: bool = False
    ends_on_pass: bool = True


Search = Generator[Batch, list[Outcome], None]
Step = Generator[Batch, list[Outcome], "QuantPlan | None"]
"""A phase of a search, run with ``yield from``; returns the plan to continue from."""


class Probe(Protocol):
    """Output error of candidate plans against the fp32 model on calibration data (no eval)."""

    def errors(self, plans: Sequence[QuantPlan]) -> list[float]: ...


class Strategy(abc.ABC):
    """A tuning strategy: proposes plans in batches and learns from their outcomes.

    Subclasses set ``name`` (the ``TuningCriterion.strategy`` value) and implement ``search``.
    ``keep_searching`` is True when the user gave a timeout: the tuner then picks the best
    passing candidate by objective, so strategies should not give up after a pass.

    A strategy from another distribution registers in the entry point group
    ``inc.strategies`` (``their_name = "their_package.module:TheirStrategy"``) and is then
    usable as ``TuningCriterion(strategy="their_name")``; see ``inc_core.strategy.registry``.
    """

    name: ClassVar[str]
    #: ``strategy_kwargs`` keys this strategy reads (besides the tuner's own)
    options: ClassVar[tuple[str, ...]] = ()
    #: whether the tuner gives this strategy a ``probe`` (candidates' output error against
    #: fp32 on calibration data, no evaluation); without calibration data it gets None
    needs_probe: ClassVar[bool] = False

    def __init__(
        self,
        space: TuningSpace,
        *,
        probe: Probe | None = None,
        keep_searching: bool = False,
        seed: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.space = space
        self.probe = probe
        self.keep_searching = keep_searching
        self.seed = seed
        self.kwargs = dict(options or {})

    @abc.abstractmethod
    def search(self) -> Search:
        """Yield batches; each ``yield`` returns the outcomes of that batch's evaluated plans.

        Called once per tuning run, and again from the start on resume: the tuner answers
        plans it already evaluated from history, so a deterministic strategy replays exactly.
        """


def lowest(pairs: Sequence[tuple[QuantPlan, Outcome]]) -> tuple[QuantPlan, Outcome] | None:
    """The proposed plan with the lowest loss (earliest on ties), None for an empty list."""
    finite = [p for p in pairs if math.isfinite(p[1].loss)]
    return min(finite, key=lambda p: p[1].loss) if finite else None
