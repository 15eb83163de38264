"""``auto`` (the default): the default config, then ``conservative``, then ``basic``, all within
one trial budget. Conservative's accepted plan ends the search unless a timeout asks for more."""

from __future__ import annotations

from .base import Batch, Search, Strategy
from .basic import fallback, improve
from .conservative import accumulate_types


class AutoStrategy(Strategy):
    name = "auto"

    def search(self) -> Search:
        base = self.space.base
        outcomes = yield Batch([base], "default")
        if not outcomes:
            return
        default = outcomes[0]
        if default.passed and not self.keep_searching:
            return
        accepted = yield from accumulate_types(self.space)
        if accepted is not None and not self.keep_searching:
            return
        current = yield from improve(self.space, base, default.loss)
        assert current is not None
        yield from fallback(self.space, current)
