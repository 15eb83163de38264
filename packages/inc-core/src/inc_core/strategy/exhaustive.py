"""``exhaustive``: every combination of op choices (and tunable recipe values), default first."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from ..space import QuantPlan
from .base import Batch, Search, Strategy
from .space import TuningSpace, apply_recipe

CHUNK = 8  # plans per batch: bounds wasted parallel work after a pass, not the result


def combinations(space: TuningSpace) -> Iterator[QuantPlan]:
    names = [op.name for op in space.ops]
    recipe_values = [r.values for r in space.recipes]
    for choices in itertools.product(*(space.spaces[n].choices for n in names)):
        if not any(c.quantized for c in choices):
            continue
        plan = space.base.with_ops(dict(zip(names, choices, strict=True)))
        for values in itertools.product(*recipe_values):
            candidate = plan
            for recipe, value in zip(space.recipes, values, strict=True):
                if value != recipe.values[0]:
                    candidate = apply_recipe(space, candidate, recipe.name, value)
            yield candidate


class ExhaustiveStrategy(Strategy):
    name = "exhaustive"

    def search(self) -> Search:
        plans = combinations(self.space)
        while chunk := list(itertools.islice(plans, CHUNK)):
            yield Batch(chunk, "exhaustive")
