"""Group-wise integer quantization of a weight matrix: the layout every algorithm returns.

Layout (what ONNX ``MatMul``'s ``B`` and ``com.microsoft::MatMulNBits`` use): a weight ``w``
of shape ``(K, N)`` computes ``y = x @ w`` from inputs ``x`` of shape ``(..., K)``. Groups run
along ``K``: for each output column ``n``, rows ``[j * g, (j + 1) * g)`` share one scale and one
zero point. ``group_size=-1`` is one group over all of ``K`` (per output channel). When ``g``
does not divide ``K``, ``K`` is padded with zero rows to ``ceil(K / g) * g`` as MatMulNBits
pads its last block; the padded rows quantize to the zero point and are cropped on dequantize.

Integers are stored unsigned, ``q`` in ``[0, 2**bits - 1]``, with a zero point per group;
``w ~= (q - zero_point) * scale``. ``sym`` fixes the zero point at ``2**(bits - 1)`` (signed
values ``[-2**(bits-1), 2**(bits-1) - 1]``); ``asym`` chooses it so that 0.0 is exact.

Arithmetic: MLAS's (onnxruntime's ``MatMulNBitsQuantizer``, ``q4_dq.cpp``), so that inc's RTN
writes the bytes onnxruntime's quantizer writes: scales and zero points in float32, and
``q = roundf(w * (1 / scale) + zero_point)`` in float32 (reciprocal then multiply, the zero
point added before rounding, ties away from zero). Float64 division with ties to even rounded
differently where ``w / scale`` lies within float32's step of a half: 4 of MiniLM's 10.6M int4
g32 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .options import BITS, SCHEMES


@dataclass(frozen=True)
class QuantizedWeight:
    """A group-wise quantized ``(K, N)`` weight (see the module docstring for the layout)."""

    #: uint8 ``(padded_k, N)``, values in ``[0, 2**bits - 1]``
    q: np.ndarray
    #: float32 ``(n_groups, N)``; may be negative with ``full_range`` (as MatMulNBits allows)
    scale: np.ndarray
    #: uint8 ``(n_groups, N)``
    zero_point: np.ndarray
    bits: int
    #: rows per group, resolved: ``K`` when the user asked for -1
    group_size: int
    scheme: str
    #: rows of the original weight (``q`` may carry padding below them)
    k: int

    @property
    def n_groups(self) -> int:
        return int(self.scale.shape[0])

    @property
    def padded_k(self) -> int:
        return int(self.q.shape[0])

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


def check_args(bits: Any, group_size: Any, scheme: Any) -> None:
    """``ConfigError`` naming the argument and what is allowed."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ConfigError(
            f"bits={bits!r} is not allowed; allowed: integers {BITS[0]} to {BITS[-1]}"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise ConfigError(f"group_size={group_size!r} must be -1 or a positive integer")
    if group_size != -1 and group_size < 1:
        raise ConfigError(
            f"group_size={group_size!r} must be -1 (one group per output channel) or a "
            "positive integer such as 32, 64, 128"
        )
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r} is not allowed; allowed: {', '.join(SCHEMES)}")


def check_weight(w: Any) -> np.ndarray:
    """The weight as a finite 2-D float array (not copied when it already is one)."""
    array = np.asarray(w)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"weight must be a 2-D float array (K, N) as ONNX MatMul's B, got {array.dtype} "
            f"of shape {array.shape}"
        )
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError("weight must be non-empty and finite (no NaN or inf)")
    return array


def resolved_group_size(k: int, group_size: int) -> int:
    return k if group_size == -1 else int(group_size)


def grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    """``w`` ``(K, N)`` zero-padded and reshaped to ``(n_groups, g, N)`` as float64."""
    k, n = w.shape
    g = resolved_group_size(k, group_size)
    n_groups = -(-k // g)
    padded = np.zeros((n_groups * g, n), dtype=np.float64)
    padded[:k] = w
    return padded.reshape(n_groups, g, n)


def group_params(
    groups: np.ndarray,
    bits: int,
    scheme: str,
    full_range: bool = False,
    clip: np.ndarray | float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (uint8) of groups ``(..., g, N)``, one per ``(..., N)``.

    ``asym``: the range ``[min(w, 0), max(w, 0)]`` over ``2**bits - 1`` steps (0.0 exact).
    ``sym``: ``2 * max|w| / (2**bits - 1)`` (INC 2.x's default), or with ``full_range`` the
    signed extreme value mapped exactly onto ``-2**(bits-1)`` (MLAS's MatMulNBits quantizer:
    a finer step, at the price of clipping the other side's top level). ``clip`` (a ratio per
    group or one for all, in (0, 1]) shrinks the range before the scale is taken.
    """
    lo = groups.min(axis=-2)
    hi = groups.max(axis=-2)
    if clip is not None:
        lo = lo * clip
        hi = hi * clip
    levels = 2**bits - 1
    if scheme == "asym":
        # MLAS's range2scalezp, in float32
        lo32 = np.minimum(lo, 0.0).astype(np.float32)
        hi32 = np.maximum(hi, 0.0).astype(np.float32)
        scale = np.asarray((hi32 - lo32) / np.float32(levels), dtype=np.float32)
        scale[scale == 0] = 1.0  # an all-zero group: any scale is exact (MLAS stores 0)
        zero = np.clip(_round_half_away(-lo32 / scale), 0, levels)
        return scale, zero.astype(np.uint8)
    half = 2 ** (bits - 1)
    if full_range:
        # MLAS's range2scale: the larger magnitude, the minimum on a tie, onto -2**(bits-1)
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = np.asarray(extreme.astype(np.float32) / np.float32(-half), dtype=np.float32)
    else:
        scale = (2.0 * np.maximum(np.abs(lo), np.abs(hi)) / levels).astype(np.float32)
    scale[scale == 0] = 1.0
    return scale, np.full(scale.shape, half, dtype=np.uint8)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: to nearest, ties away from zero (float64 holds ``x + 0.5`` exactly for
    float32 ``x``, so the sum cannot round up a value just below a half)."""
    x64 = np.asarray(x, dtype=np.float64)
    result: np.ndarray = np.sign(x64) * np.floor(np.abs(x64) + 0.5)
    return result


def quantize_values(
    w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, bits: int
) -> np.ndarray:
    """``clip(roundf(w * (1 / scale) + zero_point))`` as uint8, each step in float32 as MLAS
    computes it (``scale``/``zero_point`` broadcast; ``w`` is taken as float32, as MLAS reads
    the weight). Elementwise: GPTQ's column-by-column calls give what one call over the
    matrix gives."""
    scale32 = np.asarray(scale, dtype=np.float32)
    with np.errstate(divide="ignore"):
        reciprocal = np.where(scale32 != 0, np.float32(1.0) / scale32, np.float32(0.0))
    shifted = np.asarray(w, dtype=np.float32) * reciprocal
    shifted = shifted + np.asarray(zero_point).astype(np.float32)
    # negative values clip to 0 whichever way their ties go: round half up is roundf here
    rounded = np.floor(shifted.astype(np.float64) + 0.5)
    result: np.ndarray = np.clip(rounded, 0, 2**bits - 1).astype(np.uint8)
    return result


def values_of(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(q - zero_point) * scale`` in float64 (the value a kernel computes with)."""
    return (q.astype(np.float64) - zero_point.astype(np.float64)) * scale.astype(np.float64)


def quantize(
    w: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    full_range: bool = False,
    clip: np.ndarray | float | None = None,
) -> QuantizedWeight:
    """Round-to-nearest group-wise quantization of ``w`` ``(K, N)``."""
    check_args(bits, group_size, scheme)
    weight = check_weight(w)
    k = weight.shape[0]
    groups = grouped(weight, group_size)
    scale, zero = group_params(groups, bits, scheme, full_range, clip)
    q = quantize_values(groups, scale[:, None, :], zero[:, None, :], bits)
    return QuantizedWeight(
        q=q.reshape(-1, weight.shape[1]),
        scale=scale,
        zero_point=zero,
        bits=bits,
        group_size=resolved_group_size(k, group_size),
        scheme=scheme,
        k=k,
    )


def dequantize(qw: QuantizedWeight) -> np.ndarray:
    """The float32 ``(K, N)`` weight ``qw`` stands for (padding cropped)."""
    n = qw.q.shape[1]
    q = qw.q.reshape(qw.n_groups, qw.group_size, n)
    values = values_of(q, qw.scale[:, None, :], qw.zero_point[:, None, :])
    return values.reshape(-1, n)[: qw.k].astype(np.float32)


def fake_quantize(
    w: Any,
    bits: int = 4,
    group_size: int = 32,
    scheme: str = "sym",
    full_range: bool = False,
    clip: np.ndarray | float | None = None,
) -> np.ndarray:
    """``dequantize(quantize(w, ...))``: the float weight a kernel would compute with."""
    return dequantize(quantize(w, bits, group_size, scheme, full_range, clip))
