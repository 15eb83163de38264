"""Range observers: consume activation batches one at a time, return the range to quantize.

Every observer keeps memory independent of how many batches it has seen:

* ``minmax``: the exact min and max.
* ``kl``: the threshold whose quantized distribution is closest, by KL divergence, to the observed
  one (TensorRT's entropy calibration, as MXNet and INC implement it).
* ``percentile``: the threshold that keeps ``percentile`` percent of the values (99.999 by default).
* ``mse``: the threshold that minimises the expected squared quantization error.

The histogram observers count values in a fixed number of bins over ``[-R, R)``, ``R`` the
smallest power of two above every ``|x|`` seen. When a batch exceeds ``R``, ``R`` doubles and pairs
of adjacent bins merge, which is exact: a value lands in the same bin whether it arrived before or
after the growth, so the histogram (and the range) does not depend on batch order or batch size.
The exact min and max are kept alongside, and every range is clipped to them.

``kl`` and ``mse`` search one threshold ``t`` on ``|x|`` (for asym schemes too, as onnxruntime's
entropy calibrator does) and return ``(max(min, -t), min(max, t))``; ``percentile`` does the same
for sym schemes and cuts each tail separately for ``scheme="asym"``. How many quantization steps
lie between 0 and the threshold (what KL compares against and MSE simulates) comes from the
dtype, scheme and convention through ``inc_core.scheme``: 127 for int8 symmetric, 255 for uint8
on non-negative data (after a ReLU), about 128 for uint8 when the data has both signs; so pass
the quantization the range is for to ``create_observer``. Thresholds below that many bins are
not searched, so with huge outliers the threshold's resolution is ``R / (bins / 2)``: more
``bins`` give finer thresholds. Exact zeros (half of a ReLU's output) are quantized exactly by
every candidate, so kl and mse leave them out of the comparison.

Compared on the same data with MXNet 1.9.1's ``_get_optimal_threshold`` (8001 bins), ``kl``'s
thresholds with the default 2048 bins were 3-9% off (normal 4.69 vs 4.51, Laplace 11.8 vs 10.8,
ReLU'd normal 4.65 vs 4.50, normal plus outliers 4.75 vs 5.01): the same algorithm on a
differently binned histogram.

Every observer also counts ``|x|`` per power of two (one int per binary exponent, exact and
order-free like the histogram). When a few values sit orders of magnitude above all the others,
with nothing in between (a corrupt calibration sample: one 1e30 pixel gave the digits CNN 0.11
accuracy instead of 0.99), ``range()`` warns with a ``CalibrationWarning`` that names the tensor
(``create_observer(..., name=...)``), how many values, how far, and what to do.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, DataError, not_allowed
from .scheme import check_finite, check_supported, compute_qparams, integer_range
from .space import ALGORITHMS

log = logging.getLogger(__name__)

DEFAULT_BINS = 2048
# Larger magnitudes would overflow the power-of-two radius; no activation is this large.
_MAX_ABS = 2.0**1000
#: A group of values at least 2**FAR_OCTAVES (256x) above every other value of the tensor, with
#: no value in between, is implausible when it is at most FAR_SHARE of the values: with such a
#: range one int8 step is wider than the rest of the tensor, which rounds to 0 or one level.
#: (No tensor of the tests' models warns: torch, ONNX Runtime incl. MiniLM, TF and MXNet PTQ
#: suites run with the warning as an error; a corrupt pixel of 1e30 leaves about 90 octaves.)
FAR_OCTAVES = 8
FAR_SHARE = 0.05


class CalibrationWarning(UserWarning):
    """Calibration saw values that make a tensor's int8 range implausible (see the message)."""


class Observer(Protocol):
    #: the tensor observed, as the backend names it (for messages); None when not given
    name: str | None

    def update(self, values: Any) -> None:
        """Fold one batch of a tensor's values into the statistics."""

    def range(self) -> tuple[float, float]:
        """(min, max) to quantize this tensor with."""


def _no_values() -> DataError:
    return DataError(
        "the observer saw no values: the calibration dataloader yielded no batches, "
        "or only empty tensors, for this tensor"
    )


class _Scheme:
    """The quantization the range is for (the threshold searches depend on it)."""

    def __init__(
        self,
        dtype: str = "int8",
        scheme: str = "sym",
        convention: str = "onnxrt",
        reduce_range: bool = False,
    ) -> None:
        check_supported(convention, dtype, scheme)
        if not isinstance(reduce_range, bool):
            raise ConfigError(f"reduce_range={reduce_range!r} must be True or False")
        self.dtype = dtype
        self.scheme = scheme
        self.convention = convention
        self.reduce_range = reduce_range

    def steps_to_threshold(self, signed: bool) -> int:
        """Quantization steps between 0 and the threshold, for data with or without negatives."""
        params = compute_qparams(
            -1.0 if signed else 0.0,
            1.0,
            dtype=self.dtype,
            scheme=self.scheme,
            convention=self.convention,
            reduce_range=self.reduce_range,
        )
        return max(1, round(1.0 / float(params.scale)))


@dataclass(frozen=True)
class FarValues:
    """A few values far above the rest of a tensor: ``count`` of ``total`` non-zero values are
    at least ``low`` in magnitude (up to ``high``), every other one is below ``bulk``."""

    count: int
    total: int
    low: float
    high: float
    bulk: float

    @property
    def ratio(self) -> float:
        """How many times larger than the rest the far values are, at least."""
        return self.low / self.bulk


#: float64's exponent bias minus float32's (1023 - 127)
_EXP32_TO_64 = 896


#: values per chunk when counting float32 exponents: the chunk's temporaries (1 byte and 4
#: bytes per value) stay in cache, and a batch of any size costs no more memory than this
_CHUNK = 1 << 20
#: tensors with fewer values are counted value by value (see ``_exponent_counts32``)
_PAIRED = 1 << 16


def _exponent_counts32(bits: NDArray[np.uint32]) -> NDArray[np.int64]:
    """How many of the float32 values (given as their bits) have each biased exponent 0..255.

    The exponent is the byte left when the 23 mantissa bits are shifted out and the sign bit
    is cast away. Two exponent bytes read as one uint16 are counted together over 65536 bins
    (each pair's row and column sums give the two bytes' counts): one ``bincount`` entry per
    two values, which is most of the cost; 3x faster than counting the values one by one
    (opennsfw's 111 M activation values per batch). A small tensor is counted value by value:
    the pair table's 65536 bins would cost more than its values.
    """
    if bits.size < _PAIRED:
        single: NDArray[np.int64] = np.bincount((bits >> 23) & 0xFF, minlength=256)
        return single
    pairs = np.zeros(1 << 16, dtype=np.int64)
    even = bits.size - bits.size % 2
    exponents = np.empty(min(_CHUNK, even), dtype=np.uint8)
    for start in range(0, even, _CHUNK):
        part = bits[start : min(start + _CHUNK, even)]
        chunk = exponents[: part.size]
        np.right_shift(part, 23, out=chunk, casting="unsafe")
        pairs += np.bincount(chunk.view(np.uint16), minlength=1 << 16)
    grid = pairs.reshape(256, 256)
    counts: NDArray[np.int64] = grid.sum(axis=0) + grid.sum(axis=1)
    if even < bits.size:
        counts[int(bits[-1] >> 23) & 0xFF] += 1
    return counts


class Octaves:
    """Counts of ``|x|`` per binary exponent: ``counts[e]`` holds 2**(e-1023) <= |x| < 2**(e-1022)
    (float64's biased exponent; 0 holds zeros and subnormals, which no range is made of)."""

    def __init__(self) -> None:
        self.counts: NDArray[np.int64] = np.zeros(2048, dtype=np.int64)

    def update(self, array: NDArray[np.floating[Any]]) -> None:
        if array.dtype == np.float32:
            self._update32(array)
            return
        # the exponent bits of the float64 values: exact, and cheaper than np.frexp
        values = np.asarray(array, dtype=np.float64)
        exponents = (np.ascontiguousarray(values).view(np.int64) >> 52) & 0x7FF
        self.counts += np.bincount(exponents.ravel(), minlength=2048)

    def _update32(self, array: NDArray[np.float32]) -> None:
        """The same counts read from float32's exponent bits, without a float64 copy of the
        batch (that copy and its 64-bit shifts were most of calibration's observer time)."""
        bits = np.ascontiguousarray(array).reshape(-1).view(np.uint32)
        counts = _exponent_counts32(bits)
        # a normal float32 of biased exponent e is a float64 of biased exponent e - 127 + 1023
        self.counts[1 + _EXP32_TO_64 : 255 + _EXP32_TO_64] += counts[1:255]
        self.counts[2047] += counts[255]  # inf and NaN, as float64 counts them
        if counts[0]:
            # zeros and float32 subnormals: the subnormals are normal float64 numbers. Most of
            # these are the zeros of a ReLU's output: counted in one pass, and the subnormals
            # (rare) picked out only when there are any
            flat = bits.view(np.float32)
            zeros = int(np.count_nonzero(flat == 0))
            self.counts[0] += zeros
            if counts[0] > zeros:
                tiny = flat[(((bits >> 23) & 0xFF) == 0) & (flat != 0)]
                self.update(tiny.astype(np.float64))

    def far(self) -> FarValues | None:
        """The values at least 2**FAR_OCTAVES above all others, when they are a few; else None."""
        occupied = np.flatnonzero(self.counts[1:]) + 1
        if len(occupied) < 2:
            return None
        total = int(self.counts[1:].sum())
        above = np.cumsum(self.counts[occupied][::-1])[::-1]  # above[i]: values in occupied[i:]
        # gaps[i]: empty octaves between occupied[i] and occupied[i + 1], plus one
        gaps = np.diff(occupied)
        for i in range(len(gaps) - 1, -1, -1):  # the highest split first
            count = int(above[i + 1])
            if count > FAR_SHARE * total:
                return None  # no minority above any lower split either
            if gaps[i] - 1 >= FAR_OCTAVES:
                return FarValues(
                    count=count,
                    total=total,
                    low=math.ldexp(1.0, int(occupied[i + 1]) - 1023),
                    high=math.ldexp(1.0, int(occupied[-1]) - 1022),
                    bulk=math.ldexp(1.0, int(occupied[i]) - 1022),
                )
        return None


def _warn_far(name: str | None, far: FarValues, algorithm: str, lo: float, hi: float) -> None:
    what = f"calibration tensor {name!r}" if name else "a calibration tensor"
    found = (
        f"{what}: {far.count} of {far.total} non-zero values have |x| >= {far.low:.3g} (up to "
        f"{far.high:.3g}), over {far.ratio:.3g}x every other value (all below {far.bulk:.3g})"
    )
    if far.count <= TOP:
        remedy = (
            "Check the calibration data for a corrupt sample; if such values are real, quantize "
            "the ops reading this tensor with activation algorithm 'percentile' or 'kl' "
            "(op_name_dict / op_type_dict), which leave them out, or keep those ops fp32"
        )
    else:  # too many to keep aside: no histogram observer can leave them out either
        remedy = (
            f"There are more than {TOP}, too many for 'percentile'/'kl' to leave out: check the "
            "calibration data for a corrupt sample, or keep the ops reading this tensor fp32 "
            "(op_name_dict)"
        )
    message = (
        f"{found}; with the range [{lo:.3g}, {hi:.3g}] ({algorithm}) one int8 step is wider than "
        f"every other value, which all round to 0 or one level. {remedy}"
    )
    log.warning("%s", message)
    warnings.warn(message, CalibrationWarning, stacklevel=_user_frame())


def _user_frame() -> int:
    """The ``stacklevel`` of the first caller outside inc's packages (the user's fit call)."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("inc_"):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _finite(values: Any) -> tuple[NDArray[np.floating[Any]], float, float]:
    """``values`` as a float32 or float64 array (float32 stays float32: no float64 copy of
    every batch) with its min and max (inf and -inf when empty), or ``check_finite``'s
    ``DataError`` when any value is NaN or infinite."""
    array = np.asarray(values)
    if array.dtype not in (np.float32, np.float64):
        array = check_finite(array, "calibration tensor")
    if not array.size:
        return array, math.inf, -math.inf
    lo, hi = float(array.min()), float(array.max())
    # min and max are finite exactly when every value is (NaN propagates through both):
    # one pass fewer than isfinite, and the observers need min and max anyway
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(array, "calibration tensor")  # raises, naming NaN or inf
    return array, lo, hi


class MinMaxObserver:
    """The exact min and max seen."""

    algorithm = "minmax"

    def __init__(self, name: str | None = None, **scheme: Any) -> None:
        _Scheme(**scheme)  # validated for a uniform create_observer(), unused by min/max
        self.name = name
        self.min = math.inf
        self.max = -math.inf
        self.octaves = Octaves()
        self.warned = False  # once per observer: the range may be asked for more than once

    def update(self, values: Any) -> None:
        array, lo, hi = _finite(values)
        if array.size:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)
            self.octaves.update(array)

    def range(self) -> tuple[float, float]:
        if self.min > self.max:
            raise _no_values()
        far = self.octaves.far()
        if far is not None and not self.warned:
            self.warned = True
            _warn_far(self.name, far, self.algorithm, self.min, self.max)
        return self.min, self.max


def _largest(
    kept: NDArray[np.float64], array: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The ``TOP`` largest of ``kept`` and ``array`` by ``(|x|, x)``, ascending, and the rest.

    The order is total, so which values are kept does not depend on batch order; values below
    the smallest kept one (most of every batch once ``TOP`` are kept) skip the sort.
    """
    if len(kept) == TOP:
        t = kept[0]
        magnitude = np.abs(array)
        candidate = (magnitude > abs(t)) | ((magnitude == abs(t)) & (array > t))
        if not candidate.any():
            return kept, array
        pool, rest = np.concatenate([kept, array[candidate]]), array[~candidate]
    else:
        pool, rest = np.concatenate([kept, array]), array[:0]
        if len(pool) > 4 * TOP:  # a first big batch: narrow it down before sorting
            magnitude = np.abs(pool)
            cut = np.partition(magnitude, len(pool) - TOP)[len(pool) - TOP]
            rest, pool = pool[magnitude < cut], pool[magnitude >= cut]
    order = np.lexsort((pool, np.abs(pool)))
    pool = pool[order]
    if len(pool) <= TOP:
        return pool, rest
    return pool[-TOP:], np.concatenate([rest, pool[:-TOP]])


class _Bins:
    """Counts over ``[-R, R)`` in ``bins`` equal bins, ``R`` a power of two grown to cover every
    value added (merging bin pairs, exactly: see the module docstring)."""

    def __init__(self, bins: int) -> None:
        self.bins = bins
        self.counts: NDArray[np.int64] = np.zeros(bins, dtype=np.int64)
        self.radius: float | None = None  # None until a non-zero value is seen
        self.zeros_before_radius = 0

    def copy(self) -> _Bins:
        other = _Bins(self.bins)
        other.counts, other.radius = self.counts.copy(), self.radius
        other.zeros_before_radius = self.zeros_before_radius
        return other

    def add(self, array: NDArray[np.float64], clipped: bool = False) -> None:
        """Count ``array``; with ``clipped`` the radius does not grow and larger values count
        in the edge bins (as if clipped to +-R)."""
        if not array.size:
            return
        amax = float(np.abs(array).max())
        if amax == 0.0 and self.radius is None:
            self.zeros_before_radius += array.size
            return
        if clipped and self.radius is not None:
            array = np.clip(array, -self.radius, self.radius)  # no int64 overflow for 1e30 / width
        elif amax > 0.0:
            self.cover(math.ldexp(1.0, math.frexp(amax)[1]))  # smallest power of two > amax
        assert self.radius is not None
        half = self.bins // 2
        index = np.floor(array / (2.0 * self.radius / self.bins)).astype(np.int64) + half
        np.clip(index, 0, self.bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def cover(self, radius: float) -> None:
        if self.radius is None:
            self.radius = radius
            self.counts[self.bins // 2] += self.zeros_before_radius  # 0 sits in bin [0, width)
            self.zeros_before_radius = 0
            return
        if radius <= self.radius:
            return
        doublings = math.frexp(radius)[1] - math.frexp(self.radius)[1]
        half = self.bins // 2
        # bin i holds [(i - half) w, (i - half + 1) w); with width w * 2**k it moves to
        # floor((i - half) / 2**k) + half, exactly where its values would land now.
        target = ((np.arange(self.bins, dtype=np.int64) - half) >> doublings) + half
        grown = np.zeros(self.bins, dtype=np.int64)
        np.add.at(grown, target, self.counts)
        self.counts = grown
        self.radius = radius


#: How many of a tensor's largest values (by |x|) a histogram observer keeps exactly, outside
#: its histogram: up to this many far values (``Octaves.far``) are left out of the histogram
#: that kl/percentile/mse search, instead of stretching it until the rest share one bin.
TOP = 4096


class HistogramObserver:
    """Exact min/max plus a fixed-size histogram of the values; subclasses pick the threshold.

    The ``TOP`` largest values by ``(|x|, x)`` are kept aside exactly and binned only when the
    range is asked for: into the same histogram (which is then the one of every value, as if
    all were binned on arrival), or, when a few far values dwarf the rest, into a histogram
    whose radius covers the rest, the far values counted in its edge bins.
    """

    algorithm = ""

    def __init__(self, bins: int = DEFAULT_BINS, name: str | None = None, **scheme: Any) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 8 or bins % 2:
            raise ConfigError(
                f"bins={bins!r} must be an even integer >= 8 (default {DEFAULT_BINS})"
            )
        self.scheme = _Scheme(**scheme)
        self.name = name
        self.octaves = Octaves()
        self.warned = False
        self.bins = bins
        self._stream = _Bins(bins)  # every value seen but those in self.top
        self.top: NDArray[np.float64] = np.empty(0)  # ascending by (|x|, x)
        # what the threshold search reads, composed by range()
        self.counts: NDArray[np.int64] = self._stream.counts
        self.radius: float | None = None
        self.zeros = 0  # exact zeros: representable in every scheme, so no search weighs them
        self.min = math.inf
        self.max = -math.inf

    @property
    def width(self) -> float:
        """Width of one bin."""
        return 2.0 * self.radius / self.bins if self.radius else 0.0

    def update(self, values: Any) -> None:
        raw, lo, hi = _finite(values)
        if not raw.size:
            return
        array = np.asarray(raw, dtype=np.float64).ravel()  # the histogram's math is float64
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(-lo, hi)
        if amax > _MAX_ABS:
            raise DataError(f"calibration tensor has |x| = {amax:g}; values above 2**1000 overflow")
        self.zeros += int(np.count_nonzero(array == 0.0))
        self.octaves.update(raw)
        self.top, rest = _largest(self.top, array)
        self._stream.add(rest)

    def _compose(self) -> None:
        """Set ``counts``/``radius`` for the search: all values, or the near ones with far
        values (when all of them are among ``top``) clipped into the edge bins."""
        far = self.octaves.far()
        near, clipped = self.top, self.top[:0]
        if far is not None and far.count <= len(self.top):
            split = len(self.top) - far.count  # top is ascending: the far values are its last
            near, clipped = self.top[:split], self.top[split:]
        bins = self._stream.copy()
        bins.add(near)
        if bins.radius is not None:
            bins.add(clipped, clipped=True)
        self.counts, self.radius = bins.counts, bins.radius

    def _abs_counts(self, with_zeros: bool = True) -> NDArray[np.int64]:
        """Counts of |x| over [0, R): bin k holds k * width <= |x| < (k + 1) * width."""
        half = self.bins // 2
        folded: NDArray[np.int64] = self.counts[half:] + self.counts[:half][::-1]
        if not with_zeros:
            folded[0] -= self.zeros
        return folded

    def range(self) -> tuple[float, float]:
        if self.min > self.max:
            raise _no_values()
        self._compose()
        if self.radius is None:  # only zeros
            return self.min, self.max
        lo, hi = self._search()
        hi = min(self.max, hi)
        lo = min(max(self.min, lo), hi)
        far = self.octaves.far()
        # the search clips far values away unless there are more than TOP of them
        if far is not None and max(-lo, hi) >= far.low and not self.warned:
            self.warned = True
            _warn_far(self.name, far, self.algorithm, lo, hi)
        return lo, hi

    def _symmetric(self, threshold: float) -> tuple[float, float]:
        return -threshold, threshold

    def _search(self) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """Keeps ``percentile`` percent of the values: of |x| when symmetric, each tail when asym."""

    algorithm = "percentile"

    def __init__(
        self,
        percentile: float = 99.999,
        bins: int = DEFAULT_BINS,
        name: str | None = None,
        **scheme: Any,
    ) -> None:
        super().__init__(bins, name, **scheme)
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
            raise ConfigError(f"percentile={percentile!r} must be a number in (0, 100]")
        if not 0 < percentile <= 100:
            raise ConfigError(f"percentile={percentile!r} must be in (0, 100]")
        self.percentile = float(percentile)

    def _search(self) -> tuple[float, float]:
        if self.scheme.scheme == "sym":
            counts = self._abs_counts()
            cdf = np.cumsum(counts)
            k = int(np.searchsorted(cdf, self.percentile / 100 * cdf[-1]))
            return self._symmetric((k + 1) * self.width)
        cdf = np.cumsum(self.counts)
        cut = (100 - self.percentile) / 200 * cdf[-1]
        left = int(np.searchsorted(cdf, cut, side="right"))
        right = int(np.searchsorted(cdf, cdf[-1] - cut))
        half = self.bins // 2
        return (left - half) * self.width, (right + 1 - half) * self.width


class KLObserver(HistogramObserver):
    """TensorRT's entropy calibration: the |x| threshold with the least KL divergence."""

    algorithm = "kl"

    def _search(self) -> tuple[float, float]:
        counts = self._abs_counts(with_zeros=False)
        used = int(np.flatnonzero(counts)[-1]) + 1
        levels = self.scheme.steps_to_threshold(signed=self.min < 0)
        if used <= levels:  # every threshold keeps the histogram's resolution: nothing to clip
            return self._symmetric(used * self.width)
        hist = counts[:used].astype(np.float64)
        outliers = np.cumsum(hist[::-1])[::-1]  # outliers[i] = hist[i:].sum()
        best, best_kl = used, math.inf
        for i in range(levels, used + 1):
            kl = _kl_divergence(hist[:i], outliers[i] if i < used else 0.0, levels)
            if kl < best_kl:
                best, best_kl = i, kl
        return self._symmetric(best * self.width)


def _kl_divergence(sliced: NDArray[np.float64], outliers: float, levels: int) -> float:
    """KL(P || Q): P the histogram clipped to ``len(sliced)`` bins, Q it quantized to ``levels``."""
    p = sliced.copy()
    p[-1] += outliers
    nonzero = p != 0
    merged = len(sliced) // levels
    starts = np.arange(levels) * merged  # the last level takes the remainder, as in TensorRT
    group = np.minimum(np.arange(len(sliced)) // merged, levels - 1)
    sums = np.add.reduceat(sliced, starts)
    if np.count_nonzero(sums) < 2:
        # All the kept mass in one level: Q copies P's single spike and the divergence says 0
        # however much is clipped (data away from 0, e.g. in [0.3, 0.9]). Not a candidate.
        return math.inf
    group_sum = sums[group]
    group_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)[group]
    q = np.where(nonzero, group_sum / np.maximum(group_nonzero, 1.0), 0.0)
    p_smooth, q_smooth = _smooth(p), _smooth(q)
    if p_smooth is None or q_smooth is None:
        return math.inf
    p_smooth /= p_smooth.sum()
    q_smooth /= q_smooth.sum()
    return float(np.sum(p_smooth * np.log(p_smooth / q_smooth)))


def _smooth(counts: NDArray[np.float64], eps: float = 1e-4) -> NDArray[np.float64] | None:
    """Move ``eps`` mass into each empty bin so the divergence is finite (TensorRT's smoothing)."""
    zero = counts == 0
    n_zero = int(zero.sum())
    n_nonzero = counts.size - n_zero
    if n_nonzero == 0:
        return None
    taken = eps * n_zero / n_nonzero
    smoothed = counts + np.where(zero, eps, -taken)
    return smoothed if np.all(smoothed > 0) else None


class MSEObserver(HistogramObserver):
    """The |x| threshold minimising the squared error of fake quantization over the histogram."""

    algorithm = "mse"

    def _search(self) -> tuple[float, float]:
        used = int(np.flatnonzero(self._abs_counts())[-1]) + 1
        levels = self.scheme.steps_to_threshold(signed=self.min < 0)
        # Below `levels` bins a step is narrower than a bin and bin centres misjudge the error.
        thresholds = np.arange(min(levels, used), used + 1) * self.width
        lo = np.maximum(self.min, -thresholds)
        hi = np.minimum(self.max, thresholds)
        s = self.scheme
        params = compute_qparams(
            np.minimum(lo, hi),
            hi,
            dtype=s.dtype,
            scheme=s.scheme,
            convention=s.convention,
            reduce_range=s.reduce_range,
            axis=0,
        )
        counts = self.counts.copy()
        counts[self.bins // 2] -= self.zeros  # quantized exactly by every candidate
        filled = np.flatnonzero(counts)
        centres = (filled - self.bins // 2 + 0.5) * self.width
        weights = counts[filled].astype(np.float64)
        qmin, qmax = integer_range(s.dtype, s.reduce_range, s.convention)
        errors = np.empty(len(thresholds))
        for start in range(0, len(thresholds), 64):  # bounded temporaries: 64 x filled bins
            scale = params.scale[start : start + 64, None]
            zero_point = params.zero_point[start : start + 64, None]
            q = np.clip(np.rint(centres / scale) + zero_point, qmin, qmax)
            errors[start : start + 64] = ((q - zero_point) * scale - centres) ** 2 @ weights
        best = int(np.argmin(errors))
        return float(lo[best]), float(hi[best])


OBSERVERS: dict[str, type] = {
    "minmax": MinMaxObserver,
    "kl": KLObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}
_SCHEME_OPTIONS = ("dtype", "scheme", "convention", "reduce_range")
OPTIONS: dict[str, tuple[str, ...]] = {
    "minmax": _SCHEME_OPTIONS,
    "kl": ("bins", *_SCHEME_OPTIONS),
    "percentile": ("percentile", "bins", *_SCHEME_OPTIONS),
    "mse": ("bins", *_SCHEME_OPTIONS),
}


def create_observer(
    algorithm: str = "minmax", *, name: str | None = None, **options: Any
) -> Observer:
    """A new observer for ``algorithm`` (minmax, kl, percentile, mse).

    ``name`` is the tensor observed as the backend names it: warnings about implausible
    ranges (``CalibrationWarning``) name it.

    Options: ``bins`` (histogram observers, default 2048), ``percentile`` (default 99.999), and
    the quantization the range is for: ``dtype`` (int8/uint8), ``scheme`` (sym/asym),
    ``convention`` (as in ``inc_core.scheme``), ``reduce_range``; kl and mse search differently
    for uint8 after a ReLU than for int8.
    """
    if algorithm not in OBSERVERS:
        raise not_allowed("algorithm", algorithm, ALGORITHMS)
    for key in options:
        if key not in OPTIONS[algorithm]:
            raise not_allowed(f"{algorithm} observer option", key, OPTIONS[algorithm])
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"observer name={name!r} must be a string (the tensor's name) or None")
    observer: Observer = OBSERVERS[algorithm](name=name, **options)
    return observer
