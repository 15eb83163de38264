"""Quantization math: scale and zero point per framework convention, quantize, dequantize.

This module is the golden reference every plugin is tested against. The formulas are the
spec's "Quantization Scheme in TensorFlow / PyTorch / IPEX / MXNet / ONNX Runtime":

* tensorflow, ipex, mxnet (oneDNN), symmetric only:
  int8  scale = 2 * max(|rmin|, |rmax|) / (qmax - qmin - 1), zero point 0
  uint8 scale = max(rmin, rmax) / (qmax - qmin), zero point 0
* pytorch (FBGEMM):
  symmetric int8/uint8 scale = max(|rmin|, |rmax|) / ((qmax - qmin) / 2),
  zero point 0 (int8) or the middle of the range (uint8: 128)
  asymmetric scale = (rmax - rmin) / (qmax - qmin), zero point = qmin - round(rmin / scale)
* onnxrt (MLAS):
  symmetric int8 scale = 2 * max(|rmin|, |rmax|) / (qmax - qmin - 1), zero point 0
  symmetric uint8 (onnxruntime's own rule) scale = 2 * max|r| / (qmax - qmin), zero point 128
  asymmetric scale = (rmax - rmin) / (qmax - qmin), zero point = qmin - round(rmin / scale)

``reduce_range`` uses 7 bits instead of 8: int8 [-64, 63], uint8 [0, 127].
Asymmetric ranges are widened to contain 0 so that 0.0 is exactly representable.
A zero-width range (an all-zero tensor) gets scale 1.0 rather than a division by zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import ConfigError, DataError, not_allowed

Convention = Literal["tensorflow", "pytorch", "ipex", "mxnet", "onnxrt"]
CONVENTIONS: tuple[str, ...] = ("tensorflow", "pytorch", "ipex", "mxnet", "onnxrt")
QUANT_DTYPES: tuple[str, ...] = ("int8", "uint8")
SCHEMES: tuple[str, ...] = ("sym", "asym")
GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel")

# (dtype, scheme) pairs each convention defines, from the spec's support matrix.
SUPPORTED: dict[str, frozenset[tuple[str, str]]] = {
    "tensorflow": frozenset({("int8", "sym"), ("uint8", "sym")}),
    "ipex": frozenset({("int8", "sym"), ("uint8", "sym")}),
    "mxnet": frozenset({("int8", "sym"), ("uint8", "sym")}),
    "pytorch": frozenset({("int8", "sym"), ("uint8", "sym"), ("uint8", "asym"), ("int8", "asym")}),
    "onnxrt": frozenset({("int8", "sym"), ("uint8", "sym"), ("uint8", "asym"), ("int8", "asym")}),
}

_NUMPY_DTYPES = {"int8": np.int8, "uint8": np.uint8}


def integer_range(dtype: str, reduce_range: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of ``dtype``, 7-bit when ``reduce_range``."""
    if dtype == "int8":
        return (-64, 63) if reduce_range else (-128, 127)
    if dtype == "uint8":
        return (0, 127) if reduce_range else (0, 255)
    raise not_allowed("dtype", dtype, QUANT_DTYPES)


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor (arrays of shape (C,) when per channel along ``axis``)."""

    scale: NDArray[np.float64]
    zero_point: NDArray[np.int64]
    dtype: str
    qmin: int
    qmax: int
    axis: int | None = None

    def _broadcast(self, ndim: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        if self.axis is None or self.scale.ndim == 0:
            return self.scale, self.zero_point
        shape = [1] * ndim
        shape[self.axis] = -1
        return self.scale.reshape(shape), self.zero_point.reshape(shape)


def check_finite(values: ArrayLike, what: str = "tensor") -> NDArray[np.float64]:
    """``values`` as float64, or a ``DataError`` if any is NaN or infinite."""
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "inf"
        raise DataError(f"{what} contains {bad}; quantization ranges must be finite")
    return array


def check_supported(convention: str, dtype: str, scheme: str) -> None:
    """Raise ``ConfigError`` naming the allowed schemes when a convention lacks (dtype, scheme)."""
    if convention not in SUPPORTED:
        raise not_allowed("convention", convention, CONVENTIONS)
    if dtype not in QUANT_DTYPES:
        raise not_allowed("dtype", dtype, QUANT_DTYPES)
    if scheme not in SCHEMES:
        raise not_allowed("scheme", scheme, SCHEMES)
    if (dtype, scheme) not in SUPPORTED[convention]:
        allowed = ", ".join(f"{d}/{s}" for d, s in sorted(SUPPORTED[convention]))
        raise ConfigError(
            f"{convention} has no {scheme} {dtype} quantization; allowed dtype/scheme: {allowed}"
        )


def compute_qparams(
    rmin: ArrayLike,
    rmax: ArrayLike,
    *,
    dtype: str = "int8",
    scheme: str = "sym",
    convention: str = "onnxrt",
    reduce_range: bool = False,
    axis: int | None = None,
) -> QuantParams:
    """Scale and zero point for the range [rmin, rmax] under ``convention``.

    ``rmin``/``rmax`` are scalars (per tensor) or 1-D arrays (per channel, with ``axis`` the
    channel axis of the tensor they describe).
    """
    check_supported(convention, dtype, scheme)
    lo = check_finite(rmin, "range minimum")
    hi = check_finite(rmax, "range maximum")
    if np.any(lo > hi):
        raise DataError(f"range minimum {lo} is greater than maximum {hi}")
    qmin, qmax = integer_range(dtype, reduce_range)

    if scheme == "asym":
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = (hi - lo) / (qmax - qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero_point = np.clip(qmin - np.round(lo / safe), qmin, qmax)
    else:
        amax = np.maximum(np.abs(lo), np.abs(hi))
        if dtype == "int8":
            if convention == "pytorch":
                scale = amax / ((qmax - qmin) / 2)
            else:
                scale = 2 * amax / (qmax - qmin - 1)
            zero_point = np.zeros_like(scale)
        elif convention == "pytorch":
            scale = amax / ((qmax - qmin) / 2)
            zero_point = np.full_like(scale, (qmin + qmax + 1) // 2)
        elif convention == "onnxrt":
            scale = 2 * amax / (qmax - qmin)
            zero_point = np.full_like(scale, (qmin + qmax + 1) // 2)
        else:  # oneDNN: unsigned symmetric covers [0, rmax]
            scale = np.maximum(lo, hi) / (qmax - qmin)
            zero_point = np.zeros_like(scale)

    scale = np.where(scale > 0, scale, 1.0).astype(np.float64)
    return QuantParams(
        scale=scale,
        zero_point=np.asarray(zero_point, dtype=np.int64),
        dtype=dtype,
        qmin=qmin,
        qmax=qmax,
        axis=axis if scale.ndim > 0 else None,
    )


def quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.integer]:
    """Round-to-nearest-even quantization of ``x``, saturated to the integer range."""
    values = check_finite(x, "tensor to quantize")
    scale, zero_point = params._broadcast(values.ndim)
    q = np.clip(np.rint(values / scale) + zero_point, params.qmin, params.qmax)
    return q.astype(_NUMPY_DTYPES[params.dtype])


def dequantize(q: ArrayLike, params: QuantParams) -> NDArray[np.float64]:
    """The real values that the integers ``q`` stand for."""
    ints = np.asarray(q, dtype=np.int64)
    scale, zero_point = params._broadcast(ints.ndim)
    return (ints - zero_point) * scale


def fake_quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.float64]:
    """``dequantize(quantize(x))``: what the int8 model sees in place of ``x``."""
    return dequantize(quantize(x, params), params)


def tensor_range(
    x: ArrayLike, granularity: str = "per_tensor", axis: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Min and max of ``x``: scalars per tensor, or one per slice along ``axis`` per channel."""
    values = check_finite(x)
    if granularity == "per_tensor":
        return np.asarray(values.min()), np.asarray(values.max())
    if granularity != "per_channel":
        raise not_allowed("granularity", granularity, GRANULARITIES)
    reduce_axes = tuple(i for i in range(values.ndim) if i != axis % values.ndim)
    return values.min(axis=reduce_axes), values.max(axis=reduce_axes)


def weight_qparams(
    weight: ArrayLike,
    *,
    dtype: str = "int8",
    scheme: str = "sym",
    granularity: str = "per_tensor",
    axis: int = 0,
    convention: str = "onnxrt",
    reduce_range: bool = False,
) -> QuantParams:
    """Quantization parameters of a weight tensor from its own min/max."""
    lo, hi = tensor_range(weight, granularity, axis)
    return compute_qparams(
        lo,
        hi,
        dtype=dtype,
        scheme=scheme,
        convention=convention,
        reduce_range=reduce_range,
        axis=axis if granularity == "per_channel" else None,
    )
