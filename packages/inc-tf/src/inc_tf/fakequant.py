"""Fake quantization in the TensorFlow convention, in two flavours that agree exactly.

* ``frozen_*``: TensorFlow ``FakeQuantWithMinMaxVars`` ops with constant ranges. The TFLite
  converter reads their min/max as the tensor's quantization parameters, so inc's own ranges
  (not the converter's) end up in the int8 model.
* ``ste_*``: the same rounding written with ``keras.ops`` and a straight-through estimator, for
  quantization-aware training.

Both derive their bounds from ``inc_core.scheme.compute_qparams(..., convention="tensorflow")``:
int8 is symmetric on [-127, 127] (TF's ``narrow_range``; scale = 2*max|r| / 254), uint8 covers
[0, max] with 256 levels (scale = max / 255). In the TFLite model a uint8 tensor is an int8
tensor with zero point -128: the same integers shifted by 128.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from keras import ops

from inc_core import scheme

CONVENTION = "tensorflow"


@dataclass(frozen=True)
class Bounds:
    """What a FakeQuant op needs: [lo, hi] (per channel: arrays) and the integer grid."""

    lo: np.ndarray
    hi: np.ndarray
    narrow_range: bool

    @property
    def levels(self) -> int:
        return 254 if self.narrow_range else 255


def bounds(rmin: Any, rmax: Any, dtype: str) -> Bounds:
    """FakeQuant bounds whose nudged scale equals the TensorFlow convention's scale."""
    axis = -1 if np.ndim(rmin) else None
    params = scheme.compute_qparams(
        rmin, rmax, dtype=dtype, scheme="sym", convention=CONVENTION, axis=axis
    )
    if dtype == "int8":  # [-127, 127] * scale, zero point 0
        return Bounds(-127.0 * params.scale, 127.0 * params.scale, narrow_range=True)
    return Bounds(np.zeros_like(params.scale), 255.0 * params.scale, narrow_range=False)


def weight_bounds(
    kernel: np.ndarray, dtype: str, granularity: str, depthwise: bool = False
) -> Bounds:
    """Symmetric bounds of a kernel: per tensor, or per output channel (the last axis; for a
    depthwise kernel (h, w, in, mult) the ``in * mult`` channels)."""
    if granularity == "per_channel":
        channels = kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1)
        amax = np.abs(kernel).reshape(-1, channels).max(axis=0)
    else:
        amax = np.asarray(np.abs(kernel).max())
    return bounds(-amax, amax, dtype)


def frozen(x: Any, b: Bounds) -> Any:
    """``x`` through a FakeQuant op with constant bounds (per tensor or along the last axis)."""
    lo, hi = np.asarray(b.lo, np.float32), np.asarray(b.hi, np.float32)
    if lo.ndim == 0:
        return tf.quantization.fake_quant_with_min_max_vars(
            x, float(lo), float(hi), num_bits=8, narrow_range=b.narrow_range
        )
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        x, lo, hi, num_bits=8, narrow_range=b.narrow_range
    )


def frozen_kernel(kernel: np.ndarray, b: Bounds, depthwise: bool) -> Any:
    """The kernel as a constant behind a FakeQuant op; depthwise kernels (h, w, in, mult) are
    quantized per ``in * mult`` channel, the axis TFLite's depthwise filter keeps last."""
    const = tf.constant(kernel, dtype=tf.float32)
    if depthwise and np.asarray(b.lo).ndim == 1:
        h, w, cin, mult = kernel.shape
        flat = tf.reshape(const, (h, w, 1, cin * mult))
        return tf.reshape(frozen(flat, b), kernel.shape)
    return frozen(const, b)


def ste(x: Any, scale: Any, qmin: float, qmax: float) -> Any:
    """Fake quantization with a straight-through gradient (zero outside the clipping range)."""
    clipped = ops.clip(x, qmin * scale, qmax * scale)
    rounded = ops.round(clipped / scale) * scale
    return clipped + ops.stop_gradient(rounded - clipped)


def ste_scale(rmin: Any, rmax: Any, dtype: str) -> tuple[Any, float, float]:
    """(scale, qmin, qmax) in keras.ops, matching ``bounds`` for the same range."""
    if dtype == "int8":
        amax = ops.maximum(ops.abs(rmin), ops.abs(rmax))
        scale = 2.0 * amax / 254.0
        return ops.where(scale > 0, scale, 1.0), -127.0, 127.0
    scale = ops.maximum(rmin, rmax) / 255.0
    return ops.where(scale > 0, scale, 1.0), 0.0, 255.0


def ste_kernel(kernel: Any, dtype: str, granularity: str, depthwise: bool = False) -> Any:
    """The kernel fake-quantized from its current min/max (per output channel or per tensor)."""
    if granularity == "per_channel":
        axes = (0, 1) if depthwise else tuple(range(len(kernel.shape) - 1))
        amax = ops.max(ops.abs(kernel), axis=axes, keepdims=True)
    else:
        amax = ops.max(ops.abs(kernel))
    scale, qmin, qmax = ste_scale(-amax, amax, dtype)
    return ste(kernel, scale, qmin, qmax)
