"""The strategy interface, and the tuning space strategies search.

A strategy is a generator. It yields a ``Batch`` of candidate plans and receives back one
``Outcome`` per plan that was evaluated, in order (a prefix of the batch when evaluation stopped
early). The tuner owns everything else: evaluation (serial or on an executor), the trial budget,
the timeout, history and resume. Plans inside one batch must not depend on each other's results,
which is what lets the tuner evaluate them in parallel and still decide exactly as a serial run.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

from ..space import OpInfo, OpQuant, OpSpace, QuantPlan, TensorScheme

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class RecipeChoice:
    """A recipe whose value is tuned: ``values[0]`` is what the user's config gives."""

    name: str
    values: tuple[Any, ...]


_FIELDS = tuple(f.name for f in fields(TensorScheme))


def _steps_apart(a: OpQuant, b: OpQuant) -> int:
    """How many fields differ between two quantized choices (approach counts once)."""
    if a.approach != b.approach:
        return 100
    diff = 0
    for mine, theirs in ((a.activation, b.activation), (a.weight, b.weight)):
        if mine is None or theirs is None:
            diff += int(mine is not theirs)
            continue
        diff += sum(getattr(mine, f) != getattr(theirs, f) for f in _FIELDS)
    return diff


class TuningSpace:
    """Every op's choices (default first, float fallback last) plus the tunable recipes."""

    def __init__(
        self, spaces: Sequence[OpSpace], base: QuantPlan, recipes: Sequence[RecipeChoice] = ()
    ) -> None:
        self.spaces = {s.op.name: s for s in spaces}
        self.ops: list[OpInfo] = [s.op for s in spaces]
        self.base = base
        self.recipes = tuple(recipes)

    def types(self) -> list[str]:
        """Op types in order of first appearance in the model."""
        return list(dict.fromkeys(op.type for op in self.ops))

    def ops_of_type(self, op_type: str) -> list[str]:
        return [op.name for op in self.ops if op.type == op_type]

    def float_choice(self, name: str) -> OpQuant | None:
        return next((c for c in self.spaces[name].choices if not c.quantized), None)

    def fallback_candidates(self, plan: QuantPlan) -> list[str]:
        """Ops quantized in ``plan`` that may fall back to float, in model order."""
        return [
            op.name
            for op in self.ops
            if plan.ops[op.name].quantized and self.float_choice(op.name) is not None
        ]

    def fallback(self, plan: QuantPlan, names: Sequence[str]) -> QuantPlan:
        changes = {}
        for name in names:
            choice = self.float_choice(name)
            if choice is not None:
                changes[name] = choice
        return plan.with_ops(changes)

    def restore(self, plan: QuantPlan, names: Sequence[str]) -> QuantPlan:
        """``plan`` with ``names`` back at the default plan's choice."""
        return plan.with_ops({n: self.base.ops[n] for n in names})

    def all_float(self) -> QuantPlan:
        return self.fallback(self.base, self.fallback_candidates(self.base))

    def type_variants(self, plan: QuantPlan, op_type: str) -> list[QuantPlan]:
        """One-step changes of the quantization options of every op of ``op_type``.

        The choices one field away from the current one (e.g. another calibration algorithm,
        per-tensor instead of per-channel weights), plus the first choice of each other approach
        (static -> dynamic), applied to all ops of the type that allow them.
        """
        names = [n for n in self.ops_of_type(op_type) if plan.ops[n].quantized]
        if not names:
            return []
        current = plan.ops[names[0]]
        variants: list[OpQuant] = []
        seen_approaches = {current.approach}
        for choice in self.spaces[names[0]].choices:
            if not choice.quantized or choice == current:
                continue
            if choice.approach not in seen_approaches:
                seen_approaches.add(choice.approach)
                variants.append(choice)
            elif _steps_apart(choice, current) == 1:
                variants.append(choice)
        plans = []
        for variant in variants:
            changes = {n: variant for n in names if variant in self.spaces[n].choices}
            plans.append(plan.with_ops(changes))
        return plans

    def recipe_variants(self, plan: QuantPlan) -> list[QuantPlan]:
        """``plan`` with one tunable recipe at each of its other values."""
        out = []
        for recipe in self.recipes:
            for value in recipe.values[1:]:
                out.append(apply_recipe(self, plan, recipe.name, value))
        return out

    def tunable(self) -> list[str]:
        """Ops with more than one choice, in model order."""
        return [op.name for op in self.ops if not self.spaces[op.name].fixed]


# Recipes that switch quantization of the first/last compute op: the core applies them by
# falling that op back, so they have an effect on every backend.
FIRST_LAST = ("first_conv_or_matmul_quantization", "last_conv_or_matmul_quantization")
_COMPUTE_TYPES = ("conv", "matmul", "gemm", "linear", "dense")


def is_compute_type(op_type: str) -> bool:
    lowered = op_type.lower()
    return any(t in lowered for t in _COMPUTE_TYPES)


def first_last_op(space: TuningSpace, recipe: str) -> str | None:
    compute = [op.name for op in space.ops if is_compute_type(op.type)]
    if not compute:
        return None
    return compute[0] if recipe == FIRST_LAST[0] else compute[-1]


def apply_recipe(space: TuningSpace, plan: QuantPlan, name: str, value: Any) -> QuantPlan:
    if name == "smooth_quant_args":
        return plan.with_recipes({"smooth_quant": True, name: value})
    plan = plan.with_recipes({name: value})
    if name in FIRST_LAST:
        op = first_last_op(space, name)
        if op is not None:
            plan = space.restore(plan, [op]) if value else space.fallback(plan, [op])
    return plan


def tunable_recipes(space_ops: Sequence[OpInfo], recipes: Mapping[str, Any]) -> list[RecipeChoice]:
    """The recipes whose values enter the search: lists of smooth-quant alphas, and first/last
    conv-or-matmul quantization when the user left them unset and the model has such ops."""
    out = []
    sq_args = recipes.get("smooth_quant_args")
    if isinstance(sq_args, Mapping) and isinstance(sq_args.get("alpha"), (list, tuple)):
        alphas = list(sq_args["alpha"])
        if alphas:
            out.append(
                RecipeChoice(
                    "smooth_quant_args", tuple({**sq_args, "alpha": float(a)} for a in alphas)
                )
            )
    compute = [op for op in space_ops if is_compute_type(op.type)]
    for name in FIRST_LAST[: min(len(compute), 2)]:  # one compute op is first and last
        if name not in recipes:
            out.append(RecipeChoice(name, (True, False)))
    return out


class Strategy(abc.ABC):
    """A tuning strategy: proposes plans in batches and learns from their outcomes.

    Subclasses set ``name`` (the ``TuningCriterion.strategy`` value) and implement ``search``.
    ``keep_searching`` is True when the user gave a timeout: the tuner then picks the best
    passing candidate by objective, so strategies should not give up after a pass.
    """

    name: ClassVar[str]
    #: ``strategy_kwargs`` keys this strategy reads (besides the tuner's own)
    options: ClassVar[tuple[str, ...]] = ()

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
