"""``mse_v2`` / ``sensitivity``: fall back the most sensitive op until the goal is met, then
restore the least sensitive fallen-back ops while the goal still holds.

An op's sensitivity is how much the model's output error (against fp32, on calibration data)
drops when that op alone falls back from the fully quantized default plan.
"""

from __future__ import annotations

from .base import Batch, Search, Strategy
from .mse import error_order


class MseV2Strategy(Strategy):
    name = "mse_v2"
    needs_probe = True

    def search(self) -> Search:
        space = self.space
        base = space.base
        outcomes = yield Batch([base], "default")
        if not outcomes or (outcomes[0].passed and not self.keep_searching):
            return
        names = space.fallback_candidates(base)
        sensitivity = None
        if self.probe is not None:
            errors = self.probe.errors([base, *(space.fallback(base, [n]) for n in names)])
            sensitivity = [errors[0] - e for e in errors[1:]]
        order = error_order(space, base, sensitivity)
        grown = [space.fallback(base, order[:k]) for k in range(1, len(order) + 1)]
        outcomes = yield Batch(
            grown, "fallback by sensitivity", until_pass=True, ends_on_pass=False
        )
        if not outcomes or not outcomes[-1].passed:
            return
        current = grown[len(outcomes) - 1]
        fallen = order[: len(outcomes)]
        for name in reversed(fallen[:-1] if len(fallen) > 1 else []):
            candidate = space.restore(current, [name])
            result = yield Batch([candidate], f"restore {name}", ends_on_pass=False)
            if result and result[0].passed:
                current = candidate


class SensitivityStrategy(MseV2Strategy):
    name = "sensitivity"
