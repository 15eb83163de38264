"""RTN: round-to-nearest group-wise quantization, optionally with a per-group clip search."""

from __future__ import annotations

from typing import Any

import numpy as np

from .groupwise import (
    QuantizedWeight,
    check_args,
    check_weight,
    group_params,
    grouped,
    quantize,
    quantize_values,
    values_of,
)

#: clip ratios the MSE search tries (INC 2.x's RTN search range, 0.805 to 1.0)
MSE_RATIOS: np.ndarray = np.round(np.arange(1.0, 0.8, -0.005), 3)


def rtn(
    w: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    full_range: bool = False,
    mse_search: bool = False,
) -> QuantizedWeight:
    """Round ``w`` ``(K, N)`` to the nearest level of each group's grid.

    With ``mse_search`` each group (per output column) takes the clip ratio in ``MSE_RATIOS``
    that minimises its own squared weight error: shrinking the range trades the outliers'
    error for a finer step on the bulk.
    """
    check_args(bits, group_size, scheme)
    weight = check_weight(w)
    if not mse_search:
        return quantize(weight, bits, group_size, scheme, full_range)
    return quantize(
        weight,
        bits,
        group_size,
        scheme,
        full_range,
        clip=best_clip(weight, bits, group_size, scheme, full_range),
    )


def best_clip(
    w: np.ndarray, bits: int, group_size: int, scheme: str, full_range: bool
) -> np.ndarray:
    """Per group and output column, the ratio in ``MSE_RATIOS`` with the least weight error."""
    groups = grouped(w, group_size)
    best_err = np.full((groups.shape[0], groups.shape[2]), np.inf)
    best = np.ones_like(best_err)
    for ratio in MSE_RATIOS:
        scale, zero = group_params(groups, bits, scheme, full_range, float(ratio))
        q = quantize_values(groups, scale[:, None, :], zero[:, None, :], bits)
        err = ((values_of(q, scale[:, None, :], zero[:, None, :]) - groups) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better] = err[better]
        best[better] = ratio
    return best
