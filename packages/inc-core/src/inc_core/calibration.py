"""Range observers: consume activation batches one at a time, return the range to quantize.

Every observer keeps memory independent of how many batches it has seen.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .errors import not_allowed
from .scheme import check_finite


class Observer(Protocol):
    def update(self, values: Any) -> None:
        """Fold one batch of a tensor's values into the statistics."""

    def range(self) -> tuple[float, float]:
        """(min, max) to quantize this tensor with."""


class MinMaxObserver:
    """The exact min and max seen."""

    def __init__(self) -> None:
        self.min = np.inf
        self.max = -np.inf

    def update(self, values: Any) -> None:
        array = check_finite(values, "calibration tensor")
        if array.size:
            self.min = min(self.min, float(array.min()))
            self.max = max(self.max, float(array.max()))

    def range(self) -> tuple[float, float]:
        if self.min > self.max:
            raise ValueError("observer saw no values")
        return self.min, self.max


OBSERVERS: dict[str, type] = {"minmax": MinMaxObserver}


def create_observer(algorithm: str = "minmax", **options: Any) -> Observer:
    """A new observer for ``algorithm`` (minmax, kl, percentile, mse)."""
    if algorithm not in OBSERVERS:
        raise not_allowed("algorithm", algorithm, ("minmax", "kl", "percentile", "mse"))
    observer: Observer = OBSERVERS[algorithm](**options)
    return observer
