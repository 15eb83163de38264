"""``mse``: fall back ops in order of their output error on calibration data.

Each op is quantized alone (the rest in fp32) and its model output compared with the fp32
model's; the worst op falls back first, then the two worst, and so on.
"""

from __future__ import annotations

import logging

from ..space import QuantPlan
from .base import Batch, Search, Strategy
from .space import TuningSpace

log = logging.getLogger(__name__)


def error_order(space: TuningSpace, plan: QuantPlan, errors: list[float] | None) -> list[str]:
    names = space.fallback_candidates(plan)
    if errors is None:
        log.warning(
            "no output-error probe (backend.predict or calibration data missing); model order"
        )
        return names
    return [n for _, n in sorted(zip(errors, names, strict=True), key=lambda p: -p[0])]


class MseStrategy(Strategy):
    name = "mse"
    needs_probe = True

    def search(self) -> Search:
        base = self.space.base
        outcomes = yield Batch([base], "default")
        if not outcomes or (outcomes[0].passed and not self.keep_searching):
            return
        names = self.space.fallback_candidates(base)
        errors = None
        if self.probe is not None:
            alone = self.space.all_float()
            errors = self.probe.errors([alone.with_ops({n: base.ops[n]}) for n in names])
        order = error_order(self.space, base, errors)
        grown = [self.space.fallback(base, order[:k]) for k in range(1, len(order) + 1)]
        yield Batch(grown, "fallback by output error", until_pass=True)
