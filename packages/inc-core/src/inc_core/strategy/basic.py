"""``basic``: default, tunable recipes, op-type-wise options, op-wise fallback, accumulated fallback."""

from __future__ import annotations

from ..space import QuantPlan
from .base import Batch, Search, Step, Strategy, lowest
from .space import TuningSpace


def improve(space: TuningSpace, current: QuantPlan, loss: float) -> Step:
    """Recipe values, then each op type's quantization options, keeping whatever lowers the loss."""
    variants = space.recipe_variants(current)
    if variants:
        outcomes = yield Batch(variants, "recipes")
        found = lowest(list(zip(variants, outcomes, strict=False)))
        if found is not None and found[1].loss < loss:
            current, loss = found[0], found[1].loss
    for op_type in space.types():
        variants = space.type_variants(current, op_type)
        if not variants:
            continue
        outcomes = yield Batch(variants, f"{op_type} options")
        found = lowest(list(zip(variants, outcomes, strict=False)))
        if found is not None and found[1].loss < loss:
            current, loss = found[0], found[1].loss
    return current


def fallback(space: TuningSpace, current: QuantPlan) -> Step:
    """Each op alone in float, then growing sets ordered by how much each one helped."""
    names = space.fallback_candidates(current)
    if not names:
        return current
    singles = [space.fallback(current, [n]) for n in names]
    outcomes = yield Batch(singles, "op-wise fallback")
    if len(outcomes) < len(singles):
        return current
    impact = {n: o.loss for n, o in zip(names, outcomes, strict=True)}
    order = sorted(names, key=lambda n: impact[n])
    grown = [space.fallback(current, order[:k]) for k in range(2, len(order) + 1)]
    if grown:
        yield Batch(grown, "accumulated fallback", until_pass=True)
    return current


class BasicStrategy(Strategy):
    """INC's default search: stops at the first candidate meeting the goal (``timeout=0``)."""

    name = "basic"

    def search(self) -> Search:
        base = self.space.base
        outcomes = yield Batch([base], "default")
        if not outcomes:
            return
        current = yield from improve(self.space, base, outcomes[0].loss)
        assert current is not None
        yield from fallback(self.space, current)
