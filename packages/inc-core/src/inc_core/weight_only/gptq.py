"""GPTQ (Frantar et al., 2022): quantize one input row of ``w`` at a time and spread each
row's rounding error over the rows not yet quantized, weighted by the inverse Hessian of the
layer's squared output error, ``H = 2 X^T X / n`` from calibration inputs.

Layout as in ``groupwise``: ``w`` is ``(K, N)`` and the paper's "columns" are our ``K`` rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .groupwise import (
    QuantizedWeight,
    check_args,
    check_weight,
    group_params,
    quantize_values,
    resolved_group_size,
    values_of,
)
from .options import RECIPE_ARGS

_DEFAULTS = RECIPE_ARGS["gptq_args"]


def hessian(x: Any) -> np.ndarray:
    """``2 X^T X / n`` (float64 ``(K, K)``) of inputs ``x`` ``(..., K)`` (rows are samples)."""
    acc = HessianAccumulator()
    acc.add(x)
    return acc.value


class HessianAccumulator:
    """``hessian`` over batches that arrive one at a time, in O(K^2) memory."""

    def __init__(self) -> None:
        self.samples = 0
        self._sum: np.ndarray | None = None

    def add(self, x: Any) -> None:
        array = np.asarray(x, dtype=np.float64)
        if array.ndim < 1 or array.size == 0:
            raise ValueError(f"calibration inputs must be (..., K) with K > 0, got {array.shape}")
        rows = array.reshape(-1, array.shape[-1])
        if not np.isfinite(rows).all():
            raise ValueError("calibration inputs hold NaN or inf; GPTQ needs finite activations")
        if self._sum is not None and self._sum.shape[0] != rows.shape[1]:
            raise ValueError(
                f"calibration inputs have {rows.shape[1]} features, earlier batches had "
                f"{self._sum.shape[0]}"
            )
        gram = rows.T @ rows
        self._sum = gram if self._sum is None else self._sum + gram
        self.samples += rows.shape[0]

    @property
    def value(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError("no calibration inputs were added")
        result: np.ndarray = 2.0 * self._sum / self.samples
        return result


def gptq(
    w: Any,
    h: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    percdamp: float = _DEFAULTS["percdamp"],
    block_size: int = _DEFAULTS["block_size"],
    act_order: bool = _DEFAULTS["act_order"],
    static_groups: bool = _DEFAULTS["static_groups"],
    full_range: bool = False,
    samples: int | None = None,
) -> QuantizedWeight:
    """Quantize ``w`` ``(K, N)`` with GPTQ given the Hessian ``h`` ``(K, K)`` of its inputs.

    ``samples`` is the number of input rows ``h`` was estimated from; when given, ``h``'s
    off-diagonal terms are shrunk toward 0 by ``K / (K + samples)`` (``shrunk_hessian``).

    ``percdamp * mean(diag(h))`` is added to the diagonal before the Cholesky inverse.
    ``block_size`` rows are compensated eagerly, the rest once per block (the paper's lazy
    batch; the result does not depend on it). ``act_order`` quantizes rows by descending
    ``diag(h)``. A group's scale and zero point are taken from its current (compensated)
    weights when its first row is reached, or from the original weights with
    ``static_groups``; groups stay contiguous along ``K`` either way (MatMulNBits' layout).
    """
    check_args(bits, group_size, scheme)
    weight = check_weight(w)
    k, n = weight.shape
    hess = np.array(h, dtype=np.float64)
    if hess.shape != (k, k) or not np.isfinite(hess).all():
        raise ValueError(
            f"hessian must be a finite ({k}, {k}) array for a weight of {k} rows, got {hess.shape}"
        )
    if not 0.0 < percdamp <= 1.0:
        raise ValueError(f"percdamp={percdamp!r} must be in (0, 1]")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive integer")
    g = resolved_group_size(k, group_size)
    n_groups = -(-k // g)
    if samples is not None:
        hess = shrunk_hessian(hess, samples)

    # the paper's orientation: W is (N, K), one column per input feature
    work = weight.T.astype(np.float64)
    dead = np.diag(hess) == 0  # features that never fire: nothing to compensate with
    hess[dead, dead] = 1.0
    work[:, dead] = 0.0

    scale = np.ones((n_groups, n), dtype=np.float32)
    zero = np.zeros((n_groups, n), dtype=np.uint8)
    ready = np.zeros(n_groups, dtype=bool)
    if static_groups:
        for gi in range(n_groups):
            cols = work[:, gi * g : (gi + 1) * g]
            scale[gi], zero[gi] = group_params(cols.T, bits, scheme, full_range)
        ready[:] = True

    perm = np.argsort(-np.diag(hess), kind="stable") if act_order else np.arange(k)
    position = np.argsort(perm)  # original feature -> its place in quantization order
    work = work[:, perm]
    hess = hess[perm][:, perm]
    hess[np.diag_indices(k)] += percdamp * np.mean(np.diag(hess))
    hinv = _upper_cholesky_inverse(hess, percdamp)

    q = np.zeros((n, k), dtype=np.uint8)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        block = work[:, i1:i2].copy()
        errors = np.zeros_like(block)
        hinv_block = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            gi = int(perm[i1 + i]) // g
            if not ready[gi]:
                current = _current_columns(work, block, errors, hinv, position, gi, g, k, i1, i2, i)
                scale[gi], zero[gi] = group_params(current.T, bits, scheme, full_range)
                ready[gi] = True
            column = block[:, i]
            q[:, i1 + i] = quantize_values(column, scale[gi], zero[gi], bits)
            err = (column - values_of(q[:, i1 + i], scale[gi], zero[gi])) / hinv_block[i, i]
            block[:, i:] -= np.outer(err, hinv_block[i, i:])
            errors[:, i] = err
        work[:, i2:] -= errors @ hinv[i1:i2, i2:]

    q = q[:, position].T  # back to (K, N) in the original row order
    padded = np.empty((n_groups * g, n), dtype=np.uint8)
    padded[:k] = q
    padded[k:] = zero[-1]  # MatMulNBits' zero padding quantizes to the zero point
    return QuantizedWeight(padded, scale, zero, bits, g, scheme, k)


def shrunk_hessian(h: np.ndarray, samples: int) -> np.ndarray:
    """``(1 - a) h + a diag(h)`` with ``a = K / (K + samples)``: the Hessian of ``samples``
    input rows, its off-diagonal terms shrunk toward 0 as their estimate gets noisier.

    Why: GPTQ's compensation fits whatever correlations ``h`` holds, noise included. With
    rows not many times ``K`` it overfits the calibration data: on SmolLM2-135M's
    ``mlp.down_proj`` (K=1536) from 2048 calibration rows, its output error on other text was
    36% above RTN's at ``percdamp=0.01`` (and 55% below RTN's on the calibration rows); shrunk,
    16% below RTN's, near the best shrinkage of a grid, for every Linear of the layer and
    1024 to 4096 rows (``percdamp`` alone needed 0.3 to get there). A diagonal ``h`` gives no
    compensation (RTN's result), so this moves GPTQ toward RTN by how little data there is;
    with the paper's 128 x 2048 rows ``a`` is below 0.02 (Ledoit and Wolf's shrinkage toward
    the diagonal, with a fixed intensity)."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"samples={samples!r} must be a positive integer (input rows of h)")
    k = h.shape[0]
    keep = 1.0 - k / (k + int(samples))
    shrunk: np.ndarray = h * keep
    shrunk[np.diag_indices(k)] = np.diag(h)
    return shrunk


def _current_columns(
    work: np.ndarray,
    block: np.ndarray,
    errors: np.ndarray,
    hinv: np.ndarray,
    position: np.ndarray,
    gi: int,
    g: int,
    k: int,
    i1: int,
    i2: int,
    i: int,
) -> np.ndarray:
    """Group ``gi``'s weights as compensated so far (none of its rows is quantized yet):
    rows in the current block are up to date in ``block``; later ones still lack this
    block's lazy update, applied here for them alone."""
    where = position[gi * g : min((gi + 1) * g, k)]
    current = np.empty((work.shape[0], where.size))
    inside = where < i2
    current[:, inside] = block[:, where[inside] - i1]
    later = where[~inside]
    current[:, ~inside] = work[:, later] - errors[:, :i] @ hinv[i1 : i1 + i, later]
    return current


def _upper_cholesky_inverse(hess: np.ndarray, percdamp: float) -> np.ndarray:
    """``U`` upper triangular with ``U^T U = hess^-1`` (the paper's ``Cholesky(H^-1)^T``).

    With ``J`` the order reversal and ``J H J = L L^T``, ``U = J L^-1 J``: one Cholesky and
    one inverse of a triangle instead of two factorizations and an inverse (``U`` is unique,
    so it is the same matrix)."""
    try:
        lower = np.linalg.cholesky(hess[::-1, ::-1])
        upper: np.ndarray = np.linalg.inv(lower)[::-1, ::-1]
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            f"the damped Hessian is not positive definite (percdamp={percdamp}); raise "
            "gptq_args['percdamp'] (allowed: (0, 1]) or give more calibration samples"
        ) from exc
    return np.ascontiguousarray(np.triu(upper))
