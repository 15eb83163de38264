"""A strategy from another distribution (``inc-strategy-demo``), found through its entry point.

``last_first`` tries the default plan, then each op in fp32 alone, last op first: an order no
inc strategy uses, so a test can tell that this class ran.
"""

from __future__ import annotations

from inc_core.strategy import Batch, Strategy
from inc_core.strategy.base import Search


class LastFirstStrategy(Strategy):
    name = "last_first"
    options = ("skip_default",)

    def search(self) -> Search:
        base = self.space.base
        plans = [] if self.kwargs.get("skip_default") else [base]
        plans += [
            self.space.fallback(base, [name])
            for name in reversed(self.space.fallback_candidates(base))
        ]
        yield Batch(plans, "last first", ends_on_pass=False)


class NotAStrategy:
    """Registered by mistake: not a Strategy subclass, so the registry skips it."""

    name = "not_a_strategy"
