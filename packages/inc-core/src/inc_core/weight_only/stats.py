"""Calibration statistics of a weight op's inputs, for GPTQ (Hessian) and AWQ (sample rows).

A backend's ``calibrate`` for a weight-only plan feeds each calibrated op's input activations,
batch by batch, to ``InputStatsCollector`` and returns its ``result()``: per op an
``InputStats``, which is a ``TensorRange`` of the input (so it travels as the ``ranges`` of
``Backend.quantize`` unchanged) carrying what the op's algorithm reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..space import QuantPlan, TensorRange
from .gptq import HessianAccumulator
from .plan import calibrated_ops

#: AWQ's searches run on at most this many input rows per op (a uniform sample of the data):
#: their cost grows with rows x K x N per grid point
MAX_ROWS = 512


@dataclass(frozen=True)
class InputStats(TensorRange):
    """The input of one weight op over the calibration data."""

    #: ``2 X^T X / n`` float64 ``(K, K)`` (GPTQ), or None when no GPTQ choice needs it
    hessian: np.ndarray | None = None
    #: float32 ``(rows, K)``, at most ``MAX_ROWS`` drawn uniformly (AWQ), or None
    rows: np.ndarray | None = None
    #: input rows seen (tokens x batch)
    samples: int = 0


def stats_bytes(k: int, algorithms: tuple[str, ...], max_rows: int = MAX_ROWS) -> int:
    """Bytes the ``InputStats`` of one input of ``k`` channels hold for ``algorithms`` (GPTQ's
    float64 ``(K, K)`` Hessian, AWQ's float32 ``(max_rows, K)`` sample rows, the float64
    min/max), for backends that bound how many they collect at once."""
    size = 2 * 8 * k
    if "GPTQ" in algorithms:
        size += 8 * k * k
    if "AWQ" in algorithms:
        size += 4 * max_rows * k
    return size


class InputStatsCollector:
    """Accumulates ``InputStats`` per op: ``needs`` maps op name -> algorithm(s) it reads for."""

    def __init__(
        self, needs: Mapping[str, str | tuple[str, ...]], max_rows: int = MAX_ROWS
    ) -> None:
        self.needs = {op: (a,) if isinstance(a, str) else tuple(a) for op, a in needs.items()}
        self.max_rows = max_rows
        self._hessian: dict[str, HessianAccumulator] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._lo: dict[str, np.ndarray] = {}
        self._hi: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}
        self._rng: dict[str, np.random.Generator] = {}

    @classmethod
    def for_plan(cls, plan: QuantPlan, max_rows: int = MAX_ROWS) -> InputStatsCollector:
        return cls(calibrated_ops(plan), max_rows)

    @property
    def ops(self) -> list[str]:
        """The ops whose inputs the backend must feed."""
        return list(self.needs)

    def add(self, op: str, x: Any) -> None:
        """One batch of ``op``'s input, ``(..., K)`` (any leading axes: batch, tokens)."""
        array = np.asarray(x, dtype=np.float32)
        if array.ndim < 1 or array.size == 0:
            raise ValueError(f"input of {op!r} must be (..., K) with K > 0, got {array.shape}")
        rows = array.reshape(-1, array.shape[-1])
        if not np.isfinite(rows).all():
            raise ValueError(f"the calibration input of op {op!r} holds NaN or inf")
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        self._lo[op] = np.minimum(self._lo[op], lo) if op in self._lo else lo
        self._hi[op] = np.maximum(self._hi[op], hi) if op in self._hi else hi
        self._count[op] = self._count.get(op, 0) + rows.shape[0]
        if "GPTQ" in self.needs.get(op, ()):
            self._hessian.setdefault(op, HessianAccumulator()).add(rows)
        if "AWQ" in self.needs.get(op, ()):
            self._sample(op, rows, self._count[op] - rows.shape[0])

    def _sample(self, op: str, rows: np.ndarray, seen: int) -> None:
        """Reservoir sampling (seeded): ``max_rows`` rows drawn uniformly from every row fed so
        far, whatever the number of batches; memory stays at ``max_rows`` rows."""
        current = self._rows.get(op, np.empty((0, rows.shape[1]), dtype=np.float32))
        room = self.max_rows - current.shape[0]
        if room > 0:
            current = np.concatenate([current, rows[:room]])
            seen += min(room, rows.shape[0])
            rows = rows[room:]
        if rows.shape[0]:
            rng = self._rng.setdefault(op, np.random.default_rng(0))
            slots = rng.integers(0, seen + 1 + np.arange(rows.shape[0]))
            for index in np.flatnonzero(slots < self.max_rows):
                current[slots[index]] = rows[index]
        self._rows[op] = current

    def result(self) -> dict[str, InputStats]:
        missing = [op for op in self.needs if op not in self._count]
        if missing:
            raise ValueError(f"no calibration input was fed for op(s): {', '.join(missing)}")
        out = {}
        for op in self.needs:
            rows = self._rows.get(op)
            hess = self._hessian[op].value if op in self._hessian else None
            out[op] = InputStats(
                np.asarray(self._lo[op], dtype=np.float64),
                np.asarray(self._hi[op], dtype=np.float64),
                hessian=hess,
                rows=rows,
                samples=self._count[op],
            )
        return out
