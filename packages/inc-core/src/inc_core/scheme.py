"""Quantization math: scale and zero point per framework convention, quantize, dequantize.

This module is the golden reference every plugin is tested against. The formulas are the
spec's "Quantization Scheme in TensorFlow / PyTorch / IPEX / MXNet / ONNX Runtime", with
``[qmin, qmax]`` the integer range of the dtype and ``amax = max(|rmin|, |rmax|)``:

* tensorflow, ipex, mxnet (oneDNN), symmetric only:
  int8  scale = 2 * amax / (qmax - qmin - 1), zero point 0
  uint8 scale = max(rmin, rmax) / (qmax - qmin), zero point 0 (covers [0, rmax]; below 0 clips)
* pytorch (FBGEMM):
  symmetric int8/uint8 scale = amax / ((qmax - qmin) / 2),
  zero point 0 (int8) or the middle of the range (uint8: 128)
  asymmetric scale = (rmax - rmin) / (qmax - qmin), zero point = qmin - round(rmin / scale)
* onnxrt (MLAS):
  symmetric int8 scale = 2 * amax / (qmax - qmin - 1), zero point 0
  symmetric uint8 (onnxruntime's own rule) scale = 2 * amax / (qmax - qmin), zero point 128
  asymmetric scale = (rmax - rmin) / (qmax - qmin), zero point = qmin - round(rmin / scale)

Rounding is to nearest, ties to even (``np.round``/``np.rint``), as in ``torch.round`` and
onnxruntime's ``numpy.round`` and ``QuantizeLinear``. Asymmetric ranges are first widened to
contain 0 so that 0.0 is exactly representable (torch and onnxruntime both do this).

Where the frameworks differ from the spec text, and which one we follow:

* The spec's "Quantization Fundamentals" paragraph (symmetric uint8: ``amax / 255`` with zero
  point 128; ``X_int8 = round(Scale * X + ZeroPoint)``, i.e. the inverse scale) contradicts its
  per-framework section; we follow the per-framework section, with scale as the real step
  (``x = scale * (q - zero_point)``), the meaning every framework's stored scale has.
* The spec gives no onnxrt symmetric uint8 rule; we use onnxruntime's ``compute_scale_zp``
  (``2 * amax / 255``, zero point ``round(127.5) = 128``).
* ``reduce_range`` uses 7 bits: int8 [-64, 63], uint8 [0, 127] (torch's ranges). onnxruntime's
  ``get_qmin_qmax_for_qType`` uses int8 [-64, 64] instead, so for ``convention="onnxrt"`` the
  reduced int8 range is [-64, 64] and its symmetric scale ``2 * amax / 128`` (what onnxruntime and
  INC's own ONNX adaptor produce) rather than the spec formula's ``2 * amax / 126``.
* onnxruntime computes symmetric int8 over [-127, 127]; the scale equals the spec formula's, and
  the runtime's QuantizeLinear still saturates at -128, so our int8 qmin stays -128.
* Zero-width ranges (an all-zero tensor): pytorch clamps the scale to float32 eps
  (``torch.finfo(torch.float32).eps``), and so do we for ``convention="pytorch"``; onnxruntime
  returns scale 1.0 and zero point 0 when the scale is below float32's smallest normal, and so do
  we for ``onnxrt``; the oneDNN conventions (no rule in the spec) get scale 1.0.
* IPEX in practice uses torch's observers (``amax / 127.5``); the spec gives it oneDNN's
  ``amax / 127``, which we follow.
* torch refuses per-tensor symmetric uint8 with ``reduce_range``; we give it zero point 64, the
  middle of [0, 127], which is what onnxruntime does for the same request.
* Frameworks store scales as float32. ``convention="pytorch"`` computes in float32 as torch's
  observers do; the other conventions compute in float64 as onnxruntime's ``compute_scale_zp``
  does. Either way ``np.float32(params.scale)`` and ``params.zero_point`` are bit-identical to
  what torch 2.13's ``MinMaxObserver`` and onnxruntime's ``compute_scale_zp`` give for float32
  ranges (checked for random ranges, every dtype/scheme/reduce_range). ``QuantParams.scale``
  holds that value as float64. ``quantize`` follows the kernels' float32 arithmetic for onnxrt
  (``x / scale``: bit-identical to QuantizeLinear and ``quantize_data``) and pytorch
  (``x * (1 / scale)``: bit-identical to ``quantize_per_channel``; ``quantize_per_tensor`` fuses
  the zero point with an FMA on x86, so there a value within float32 rounding of a .5 tie can
  land one level away). Torch's symmetric ``amax / 127.5`` puts ``-amax`` exactly on such a tie.
  The oneDNN conventions divide in float64; TensorFlow's QuantizeV2 also rounds ties away from
  zero by default, so exact ties may differ by one there.
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


def integer_range(
    dtype: str, reduce_range: bool = False, convention: str | None = None
) -> tuple[int, int]:
    """(qmin, qmax) of ``dtype``, 7-bit when ``reduce_range`` (onnxruntime's int8: [-64, 64])."""
    if dtype == "int8":
        if reduce_range:
            return (-64, 64) if convention == "onnxrt" else (-64, 63)
        return (-128, 127)
    if dtype == "uint8":
        return (0, 127) if reduce_range else (0, 255)
    raise not_allowed("dtype", dtype, QUANT_DTYPES)


# torch clamps scales to float32 eps; onnxruntime replaces scales below float32's tiny by 1.0.
_TORCH_EPS = float(np.finfo(np.float32).eps)
_ORT_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class QuantParams:
    """Scale and zero point of one tensor (arrays of shape (C,) when per channel along ``axis``)."""

    scale: NDArray[np.float64]
    zero_point: NDArray[np.int64]
    dtype: str
    qmin: int
    qmax: int
    axis: int | None = None
    #: the convention whose kernel ``quantize`` reproduces; None: plain float64 arithmetic
    convention: str | None = None

    def _broadcast(self, shape: tuple[int, ...]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
        if self.axis is None or self.scale.ndim == 0:
            return self.scale, self.zero_point
        if not -len(shape) <= self.axis < len(shape) or shape[self.axis] != self.scale.size:
            raise DataError(
                f"per-channel parameters have {self.scale.size} channels on axis {self.axis}, "
                f"but the tensor has shape {shape}"
            )
        view = [1] * len(shape)
        view[self.axis] = -1
        return self.scale.reshape(view), self.zero_point.reshape(view)


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
    lo, hi = np.broadcast_arrays(lo, hi)
    if lo.ndim > 1:
        raise DataError(f"ranges must be scalars or 1-D per-channel arrays; got shape {lo.shape}")
    if lo.size > 1 and axis is None:
        raise ConfigError(f"{lo.size} per-channel ranges need axis=<channel axis of the tensor>")
    qmin, qmax = integer_range(dtype, reduce_range, convention)
    # Every convention widens the range to contain 0, so 0.0 is exactly representable.
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    if convention == "pytorch":
        return _torch_qparams(lo, hi, dtype, scheme, qmin, qmax, axis)

    amax = np.maximum(-lo, hi)
    if scheme == "asym":
        scale = (hi - lo) / (qmax - qmin)
    elif dtype == "int8":
        # The spec's qmax - qmin - 1 on two's complement ranges; onnxruntime's reduced [-64, 64]
        # is already symmetric, so its span is qmax - qmin (128), as onnxruntime computes it.
        span = qmax - qmin - 1 if qmin == -qmax - 1 else qmax - qmin
        scale = 2 * amax / span
    elif convention == "onnxrt":
        scale = 2 * amax / (qmax - qmin)
    else:  # oneDNN: unsigned symmetric covers [0, rmax]
        scale = hi / (qmax - qmin)
    scale = np.asarray(scale, dtype=np.float64)

    degenerate = scale < _ORT_TINY if convention == "onnxrt" else scale <= 0
    scale = np.where(degenerate, 1.0, scale)

    if scheme == "asym":
        zero_point = np.clip(qmin - np.round(lo / scale), qmin, qmax)
    elif dtype == "uint8" and convention == "onnxrt":
        zero_point = np.full(scale.shape, (qmin + qmax + 1) // 2)  # round(127.5) = 128; 64
    else:
        zero_point = np.zeros(scale.shape)
    if convention == "onnxrt":
        zero_point = np.where(degenerate, 0, zero_point)

    return QuantParams(
        scale=scale,
        zero_point=np.asarray(zero_point, dtype=np.int64),
        dtype=dtype,
        qmin=qmin,
        qmax=qmax,
        axis=axis if scale.ndim > 0 else None,
        convention=convention,
    )


def _torch_qparams(
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    dtype: str,
    scheme: str,
    qmin: int,
    qmax: int,
    axis: int | None,
) -> QuantParams:
    """torch's ``_calculate_qparams``, in float32 as torch computes it, so scales match bit for bit.

    (float64 then float32 differs in the last bit for asym: torch rounds ``rmax - rmin`` first.)
    """
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    if scheme == "asym":
        scale = np.maximum((hi32 - lo32) / np.float32(qmax - qmin), np.float32(_TORCH_EPS))
        zero_point = np.clip(qmin - np.round(lo32 / scale), qmin, qmax)
    else:
        amax = np.maximum(-lo32, hi32)
        scale = np.maximum(amax / np.float32((qmax - qmin) / 2), np.float32(_TORCH_EPS))
        mid = (qmin + qmax + 1) // 2 if dtype == "uint8" else 0  # 128; 64 when reduced
        zero_point = np.full(scale.shape, mid)
    return QuantParams(
        scale=np.asarray(scale, dtype=np.float64),
        zero_point=np.asarray(zero_point, dtype=np.int64),
        dtype=dtype,
        qmin=qmin,
        qmax=qmax,
        axis=axis if scale.ndim > 0 else None,
        convention="pytorch",
    )


def quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.integer]:
    """Round-to-nearest-even quantization of ``x``, saturated to the integer range.

    For onnxrt and pytorch parameters the arithmetic is the framework kernel's, in float32:
    onnxruntime's QuantizeLinear divides by the scale, torch multiplies by ``1 / scale``. Near a
    .5 tie the two can round differently, so the golden reference follows each.
    """
    values = check_finite(x, "tensor to quantize")
    scale, zero_point = params._broadcast(values.shape)
    if params.convention == "onnxrt":
        steps = np.rint(values.astype(np.float32) / scale.astype(np.float32))
    elif params.convention == "pytorch":
        inverse = np.float32(1.0) / scale.astype(np.float32)
        steps = np.rint(values.astype(np.float32) * inverse)
    else:
        steps = np.rint(values / scale)
    q = np.clip(steps + zero_point, params.qmin, params.qmax)
    return q.astype(_NUMPY_DTYPES[params.dtype])


def dequantize(q: ArrayLike, params: QuantParams) -> NDArray[np.float64]:
    """The real values that the integers ``q`` stand for."""
    ints = np.asarray(q, dtype=np.int64)
    scale, zero_point = params._broadcast(ints.shape)
    return (ints - zero_point) * scale


def fake_quantize(x: ArrayLike, params: QuantParams) -> NDArray[np.float64]:
    """``dequantize(quantize(x))``: what the int8 model sees in place of ``x``."""
    return dequantize(quantize(x, params), params)


def tensor_range(
    x: ArrayLike, granularity: str = "per_tensor", axis: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Min and max of ``x``: scalars per tensor, or one per slice along ``axis`` per channel."""
    values = check_finite(x)
    if values.size == 0:
        raise DataError(f"cannot take the range of an empty tensor (shape {values.shape})")
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
