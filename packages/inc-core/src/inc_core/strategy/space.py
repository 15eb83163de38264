"""The tuning space a strategy searches: each op's choices and the tunable recipes.

An op's choices come from ``Session.spaces`` (the backend's capability narrowed by the user's
``op_type_dict``/``op_name_dict`` and ``excluded_precisions``): default first, float fallback
last. Recipes enter as extra dimensions: a list of smooth-quant alphas, and first/last
conv-or-matmul quantization when the user left them unset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ..space import OpInfo, OpQuant, OpSpace, QuantPlan, TensorScheme


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


def _switchable_compute(spaces: Sequence[OpSpace]) -> list[str]:
    """Compute ops the first/last recipes can switch: quantizable and allowed to fall back."""
    return [
        s.op.name
        for s in spaces
        if is_compute_type(s.op.type) and s.can_fallback and any(c.quantized for c in s.choices)
    ]


def first_last_op(space: TuningSpace, recipe: str) -> str | None:
    compute = _switchable_compute(list(space.spaces.values()))
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


def tunable_recipes(spaces: Sequence[OpSpace], recipes: Mapping[str, Any]) -> list[RecipeChoice]:
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
    compute = _switchable_compute(spaces)
    for name in FIRST_LAST[: min(len(compute), 2)]:  # one compute op is first and last
        if name not in recipes:
            out.append(RecipeChoice(name, (True, False)))
    return out
