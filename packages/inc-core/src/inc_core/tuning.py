"""Accuracy-aware tuning (placeholder seam until the strategies land)."""

from __future__ import annotations

from typing import Any

from .errors import IncError
from .model import QuantizedModel
from .quantization import Session


class TuningError(IncError):
    """No candidate met the accuracy goal; ``best`` is the closest one, ``trials`` the table."""

    def __init__(
        self, message: str, best: QuantizedModel | None, trials: list[dict[str, Any]]
    ) -> None:
        super().__init__(message)
        self.best = best
        self.trials = trials


def tune(session: Session, **kwargs: Any) -> QuantizedModel:
    raise NotImplementedError("accuracy-aware tuning lands with its own issue")
