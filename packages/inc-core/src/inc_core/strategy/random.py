"""``random``: op choices drawn uniformly with a seeded generator (``strategy_kwargs={"seed": n}``)."""

from __future__ import annotations

import numpy as np

from ..space import QuantPlan
from .base import Batch, Search, Strategy
from .space import TuningSpace

CHUNK = 8
GIVE_UP = 1000  # consecutive repeats before the space counts as exhausted


def sample(space: TuningSpace, rng: np.random.Generator) -> QuantPlan:
    changes = {}
    for name in space.tunable():
        choices = space.spaces[name].choices
        changes[name] = choices[int(rng.integers(len(choices)))]
    return space.base.with_ops(changes)


class RandomStrategy(Strategy):
    name = "random"

    def search(self) -> Search:
        rng = np.random.default_rng(self.seed)
        seen: set[str] = set()
        yield Batch([self.space.base], "default")
        seen.add(self.space.base.key())
        while True:
            chunk: list[QuantPlan] = []
            repeats = 0
            while len(chunk) < CHUNK and repeats < GIVE_UP:
                plan = sample(self.space, rng)
                key = plan.key()
                if key in seen or not plan.quantized_ops():
                    repeats += 1
                    continue
                seen.add(key)
                chunk.append(plan)
                repeats = 0
            if not chunk:
                return
            yield Batch(chunk, "random")
            if len(chunk) < CHUNK:
                return
