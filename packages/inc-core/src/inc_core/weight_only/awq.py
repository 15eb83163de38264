"""AWQ (Lin et al., 2023): activation-aware scales for weight-only quantization.

Input channels that carry large activations matter most to the output, so their weight rows
are scaled up by ``s`` before quantization (finer relative steps) and the inputs divided by
``s``: ``x @ w == (x / s) @ (s[:, None] * w)``. ``s = mean|x| ** alpha``, normalised, with
``alpha`` from a grid in [0, 1] minimising the output error on calibration inputs. The caller
folds ``1 / s`` into the producer of ``x`` (a LayerNorm's gain, a previous MatMul's columns) or
inserts a ``Mul`` where the graph has no such producer. Weights that read the same input
(query, key, value) share one ``s``: pass them concatenated along ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .groupwise import (
    QuantizedWeight,
    check_args,
    check_weight,
    fake_quantize,
    group_params,
    grouped,
    quantize,
    quantize_values,
    values_of,
)
from .options import RECIPE_ARGS

_DEFAULTS = RECIPE_ARGS["awq_args"]
#: the clip search's shrink ratios of each group's range (llm-awq: down to 0.5, 20 steps)
CLIP_RATIOS: np.ndarray = np.round(1.0 - np.arange(20) * 0.025, 3)


@dataclass(frozen=True)
class AwqScale:
    """The chosen per-input-channel scale and what it bought."""

    #: float32 ``(K,)``: weights rows are multiplied by it, inputs divided by it
    scale: np.ndarray
    alpha: float
    #: mean squared output error with ``scale`` and with plain RTN (``alpha = 0``)
    loss: float
    rtn_loss: float


@dataclass(frozen=True)
class AwqResult:
    """``weight`` quantizes ``scale[:, None] * w``; its inputs must be divided by ``scale``."""

    weight: QuantizedWeight
    scale: np.ndarray
    alpha: float


def _inputs(x: Any, k: int) -> np.ndarray:
    rows = np.asarray(x, dtype=np.float64)
    if rows.ndim < 1 or rows.shape[-1] != k or rows.size == 0:
        raise ValueError(
            f"calibration inputs must be (..., {k}) for a weight of {k} rows, got {rows.shape}"
        )
    rows = rows.reshape(-1, k)
    if not np.isfinite(rows).all():
        raise ValueError("calibration inputs hold NaN or inf; AWQ needs finite activations")
    return rows


def search_scale(
    w: Any,
    x: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    n_grid: int = _DEFAULTS["n_grid"],
    full_range: bool = False,
) -> AwqScale:
    """The ``alpha`` in ``{0, 1/n_grid, ..., 1}`` whose scale gives the least output MSE.

    ``alpha = 0`` is plain RTN, so the result is never worse than RTN on ``x``.
    """
    check_args(bits, group_size, scheme)
    weight = check_weight(w).astype(np.float64)
    rows = _inputs(x, weight.shape[0])
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
        raise ValueError(f"n_grid={n_grid!r} must be a positive integer")
    magnitude = np.abs(rows).mean(axis=0)
    # the output error is rows @ (dequantized - w): float32 products (the losses compare
    # grid points; float64 would double the time of the search's one big product)
    rows32 = rows.astype(np.float32)
    best: AwqScale | None = None
    rtn_loss = np.inf
    for step in range(n_grid + 1):
        alpha = step / n_grid
        scale = _scale(magnitude, alpha)
        scaled = weight * scale[:, None].astype(np.float64)
        dequant = fake_quantize(scaled, bits, group_size, scheme, full_range).astype(np.float64)
        change = (dequant / scale[:, None] - weight).astype(np.float32)
        loss = float(np.mean(np.square(rows32 @ change, dtype=np.float64)))
        if step == 0:
            rtn_loss = loss
        if best is None or loss < best.loss:
            best = AwqScale(scale, alpha, loss, rtn_loss)
    assert best is not None
    return AwqScale(best.scale, best.alpha, best.loss, rtn_loss)


def _scale(magnitude: np.ndarray, alpha: float) -> np.ndarray:
    """``mean|x| ** alpha``, floored and normalised to a geometric mean of the extremes of 1
    (llm-awq's normalisation: the weights' overall range stays put)."""
    scale: np.ndarray = np.maximum(magnitude**alpha, 1e-4)
    scale = scale / np.sqrt(scale.max() * scale.min())
    return scale.astype(np.float32)


def search_clip(
    w: Any,
    x: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    full_range: bool = False,
) -> np.ndarray:
    """Per group and output column, the range ratio in ``CLIP_RATIOS`` that minimises that
    group's share of the output error, ``E[(x_g @ (q_g - w_g))^2]`` on inputs ``x``."""
    check_args(bits, group_size, scheme)
    weight = check_weight(w)
    rows = _inputs(x, weight.shape[0])
    groups = grouped(weight, group_size)
    n_groups, g, _ = groups.shape
    padded = np.zeros((rows.shape[0], n_groups * g))
    padded[:, : rows.shape[1]] = rows
    xg = padded.reshape(-1, n_groups, g)
    # per group, E[x_g x_g^T]: the output error of a weight change d is d^T C d
    cov = np.einsum("tGa,tGb->Gab", xg, xg) / rows.shape[0]
    best_err = np.full((n_groups, groups.shape[2]), np.inf)
    best = np.ones_like(best_err)
    for ratio in CLIP_RATIOS:
        scale, zero = group_params(groups, bits, scheme, full_range, float(ratio))
        q = quantize_values(groups, scale[:, None, :], zero[:, None, :], bits)
        diff = values_of(q, scale[:, None, :], zero[:, None, :]) - groups
        err = (diff * np.matmul(cov, diff)).sum(axis=1)  # per (group, column): d^T C d
        better = err < best_err
        best_err[better] = err[better]
        best[better] = ratio
    return best


def awq(
    w: Any,
    x: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    enable_auto_scale: bool = _DEFAULTS["enable_auto_scale"],
    enable_mse_search: bool = _DEFAULTS["enable_mse_search"],
    n_grid: int = _DEFAULTS["n_grid"],
    full_range: bool = False,
) -> AwqResult:
    """Scale search, then clip search on the scaled weight and inputs, then quantization."""
    weight = check_weight(w)
    k = weight.shape[0]
    if enable_auto_scale:
        found = search_scale(weight, x, bits, group_size, scheme, n_grid, full_range)
        scale, alpha = found.scale, found.alpha
    else:
        check_args(bits, group_size, scheme)
        scale, alpha = np.ones(k, dtype=np.float32), 0.0
    scaled = weight.astype(np.float64) * scale[:, None]
    clip = None
    if enable_mse_search:
        rows = _inputs(x, k) / scale.astype(np.float64)
        clip = search_clip(scaled, rows, bits, group_size, scheme, full_range)
    return AwqResult(quantize(scaled, bits, group_size, scheme, full_range, clip), scale, alpha)
