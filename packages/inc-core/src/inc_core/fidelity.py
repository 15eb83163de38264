"""How close an int8 model's outputs are to the fp32 model's: the numbers the fidelity guard
and the per-op diagnosis use.

Every output gets cosine similarity and SQNR (signal-to-quantization-noise ratio, in dB: the
fp32 output's power over the power of the int8 - fp32 difference). An output shaped
``(..., C)`` with ``C >= 2`` (logits, per-position class scores, CTC outputs) also gets the
agreement of its argmax along the last axis.

An output of rank >= 3 is also compared channel by channel (``channel_axis``: the C of an
NCHW or NHWC map, the fields of a detector's ``(N, 4 + classes, anchors)`` head):
``channel_sqnr_db`` is the worst channel's SQNR.

The default threshold (``holds``): every output has SQNR >= ``MIN_SQNR_DB``, or, for a class
output, its argmax agrees with fp32 on at least ``MIN_AGREEMENT`` of the positions; and no
channel is lost (``channel_sqnr_db >= MIN_CHANNEL_SQNR_DB``). Why these numbers (measured on
held-out calibration batches of the test models):

- 15 dB is noise at 3% of the signal's power (cosine ~0.985). Faithful int8 models measure far
  above it: the core's reference MLP 41.5 dB, the toy chains 31-34 dB, the digits CNN through
  onnxruntime 44.1 dB. Broken ones measure far below: a toy chain with one outlier channel
  (the problem SmoothQuant addresses) 6.7 dB, with two 3.1 dB; both back above 36 dB once the
  guard has put the sensitive ops in fp32.
- Agreement rescues a class output whose values are noisy but whose ranking holds (a scaled
  logit vector has low SQNR and the same argmax), and 0.95 is the sequence models' goal in
  issue 11. It never condemns an output whose SQNR passes: argmax over near-equal scores flips
  on any noise (the toy chain at 33.5 dB agrees on 0.94 of its positions; embeddings and a
  detector's anchor scores behave the same way).
- A whole-output SQNR can hide a lost part: YOLOv8's output concatenates box coordinates
  (0-320) with class scores (0-1); quantized together, the scores round to 0 and the output
  still measures 31 dB while every class channel measures 0 dB (no detections left). Below
  3 dB the noise has half the channel's power: the int8 model has lost it. Faithful models
  stay well above (PP-OCRv4's CTC output 8 dB in its worst time step with every op int8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_SQNR_DB = 15.0
MIN_AGREEMENT = 0.95
MIN_CHANNEL_SQNR_DB = 3.0
#: identical outputs have infinite SQNR; JSON has no infinity, so SQNR is clamped to +-this
SQNR_CLAMP_DB = 200.0


def as_arrays(value: Any, prefix: str = "output") -> list[tuple[str, np.ndarray]]:
    """A model's outputs (an array, a tuple/list or a dict of them) as named float arrays."""
    if isinstance(value, Mapping):
        out: list[tuple[str, np.ndarray]] = []
        for key in value:
            out += as_arrays(value[key], str(key))
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for i, item in enumerate(value):
            out += as_arrays(item, f"{prefix}{i}" if prefix == "output" else f"{prefix}[{i}]")
        return out
    array = np.asarray(value)
    if array.dtype.kind not in "fcbiu":
        return []  # strings, objects: nothing to compare numerically
    # float32 stays float32 (no copy): the metrics below accumulate safely in it
    return [(prefix if prefix != "output" else "output0", _floats(array))]


def sqnr_db(reference: Any, test: Any) -> float:
    """10*log10(power of ``reference`` / power of ``test - reference``), clamped to +-200 dB.

    A non-finite value in ``test`` where ``reference`` is finite is the worst case (-200).
    Computed in the outputs' own precision (float32 for float32 outputs, no float64 copies:
    the per-op diagnosis runs it on every op output of the model; numpy's pairwise sums keep
    float32 within ~1e-7 of float64 here); a non-finite sum (a non-finite value, or float32
    overflow) takes the exact float64 path.
    """
    ref = _floats(np.asarray(reference)).ravel()
    out = _floats(np.asarray(test)).ravel()
    if ref.shape != out.shape:
        raise ValueError(f"outputs differ in size: {ref.size} (fp32) vs {out.size} (int8)")
    if ref.dtype != out.dtype:
        ref, out = ref.astype(np.float64), out.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        noise = _power(out - ref)
        signal = _power(ref)
    if math.isfinite(noise) and math.isfinite(signal):
        return _db(signal, noise)
    return _exact_sqnr_db(ref.astype(np.float64), out.astype(np.float64))


def _exact_sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """``sqnr_db`` over the finite fp32 values, in float64."""
    finite = np.isfinite(ref)
    if not np.isfinite(out[finite]).all():
        return -SQNR_CLAMP_DB
    ref, out = ref[finite], out[finite]
    return _db(float(np.sum(ref**2)), float(np.sum((out - ref) ** 2)))


def _power(array: np.ndarray) -> float:
    """Sum of squares (pairwise summation: accurate in float32 too)."""
    return float(np.sum(np.square(array)))


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return SQNR_CLAMP_DB
    if signal == 0.0:
        return -SQNR_CLAMP_DB
    value = 10.0 * math.log10(signal / noise)
    return max(-SQNR_CLAMP_DB, min(SQNR_CLAMP_DB, value))


def cosine(reference: Any, test: Any) -> float:
    """Cosine similarity of the flattened outputs (1.0 when both are all zero)."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(test, dtype=np.float64).ravel()
    if not (np.isfinite(ref).all() and np.isfinite(out).all()):
        ref, out = np.nan_to_num(ref), np.nan_to_num(out)
    norms = math.sqrt(_power(ref) * _power(out))
    if norms == 0.0:
        return 1.0 if not ref.any() and not out.any() else 0.0
    return float(np.sum(ref * out) / norms)


def is_class_output(array: np.ndarray) -> bool:
    """Logits ``(N, C)`` or per-position scores ``(N, T, C)`` with ``C >= 2``: argmax along the
    last axis means something. A rank-4 map (``(N, C, H, W)``: a segmentation or probability map)
    has its channels elsewhere and its last axis is a width, so it is compared by SQNR alone."""
    return array.ndim in (2, 3) and array.shape[-1] >= 2


def channel_axis(array: np.ndarray) -> int | None:
    """The axis compared channel by channel, when there is one with at least 2 entries: of a
    rank-3 output the non-batch axis with the fewest entries (the first of equals); of a map
    (rank >= 4) its channels, axis 1 (NCHW) or the last (NHWC), whichever is smaller."""
    if array.ndim < 3:
        return None
    axes = range(1, array.ndim) if array.ndim == 3 else (1, array.ndim - 1)
    axis = min(axes, key=lambda a: (array.shape[a], a))
    return axis if array.shape[axis] >= 2 else None


def channel_sqnr_db(reference: np.ndarray, test: np.ndarray, axis: int) -> float:
    """The lowest SQNR of the slices along ``axis`` whose fp32 values are not all zero."""
    ref = np.moveaxis(_floats(np.asarray(reference)), axis, 0)
    out = np.moveaxis(_floats(np.asarray(test)), axis, 0)
    values = [
        sqnr_db(r, o)
        for r, o in zip(ref, out, strict=True)
        if np.nan_to_num(r, posinf=0.0, neginf=0.0).any()
    ]
    return min(values, default=SQNR_CLAMP_DB)


def agreement(reference: np.ndarray, test: np.ndarray) -> float:
    """Share of positions whose argmax along the last axis is the same in both outputs.

    Positions where the fp32 scores are all equal have no argmax and are left out.
    """
    ref = reference.reshape(-1, reference.shape[-1])
    out = np.nan_to_num(test.reshape(-1, test.shape[-1]), nan=-np.inf)
    decided = ref.max(axis=1) > ref.min(axis=1)
    if not decided.any():
        return 1.0
    same = ref[decided].argmax(axis=1) == out[decided].argmax(axis=1)
    return float(same.mean())


def compare(references: Sequence[Any], tests: Sequence[Any]) -> dict[str, Any]:
    """Per-output and overall (worst output) metrics of int8 ``tests`` against fp32 ``references``.

    Both are lists of model outputs, one per held-out batch; batches are concatenated per output.
    """
    ref_batches = [as_arrays(r) for r in references]
    test_batches = [as_arrays(t) for t in tests]
    names = [name for name, _ in ref_batches[0]] if ref_batches else []
    outputs = []
    for index, name in enumerate(names):
        ref = [batch[index][1] for batch in ref_batches]
        out = [batch[index][1] for batch in test_batches]
        # one concatenation per side serves every metric: along the batch axis where the
        # batches agree in their other axes (the channel comparison needs the shape), else flat
        shaped = all(a.ndim >= 1 and a.shape[1:] == ref[0].shape[1:] for a in ref + out)
        ref_all, out_all = (_cat(ref), _cat(out)) if shaped else (_flat(ref), _flat(out))
        row: dict[str, Any] = {
            "output": name,
            "cosine": cosine(ref_all, out_all),
            "sqnr_db": sqnr_db(ref_all, out_all),
        }
        if all(is_class_output(r) for r in ref):
            hits = [agreement(r, o) * _positions(r) for r, o in zip(ref, out, strict=True)]
            row["agreement"] = sum(hits) / max(1, sum(_positions(r) for r in ref))
        axis = channel_axis(ref[0]) if ref else None
        if axis is not None and shaped:
            row["channel_axis"] = axis
            row["channel_sqnr_db"] = channel_sqnr_db(ref_all, out_all, axis)
        outputs.append(row)
    summary: dict[str, Any] = {
        "cosine": min((o["cosine"] for o in outputs), default=1.0),
        "sqnr_db": min((o["sqnr_db"] for o in outputs), default=SQNR_CLAMP_DB),
        "agreement": min((o["agreement"] for o in outputs if "agreement" in o), default=None),
        "channel_sqnr_db": min(
            (o["channel_sqnr_db"] for o in outputs if "channel_sqnr_db" in o), default=None
        ),
        "outputs": outputs,
    }
    summary["holds"] = holds(outputs)
    return summary


def output_holds(row: Mapping[str, Any]) -> bool:
    """One output meets the default threshold (see the module docstring)."""
    if row.get("channel_sqnr_db", SQNR_CLAMP_DB) < MIN_CHANNEL_SQNR_DB:
        return False
    if row["sqnr_db"] >= MIN_SQNR_DB:
        return True
    return "agreement" in row and row["agreement"] >= MIN_AGREEMENT


def holds(outputs: Sequence[Mapping[str, Any]]) -> bool:
    return all(output_holds(row) for row in outputs)


def margin_db(outputs: Sequence[Mapping[str, Any]]) -> float | None:
    """How far ``outputs`` (``compare``'s rows) are above the default threshold, in dB (< 0:
    below it): the worst of each output's SQNR over ``MIN_SQNR_DB`` (left out where its argmax
    agreement holds) and its worst channel over ``MIN_CHANNEL_SQNR_DB``. None when no term is
    measured below the clamp (outputs identical to fp32 say nothing about how far they are)."""
    terms = []
    for row in outputs:
        agrees = row.get("agreement") is not None and row["agreement"] >= MIN_AGREEMENT
        if not agrees:
            terms.append(row["sqnr_db"] - MIN_SQNR_DB)
        if row.get("channel_sqnr_db") is not None:
            terms.append(row["channel_sqnr_db"] - MIN_CHANNEL_SQNR_DB)
    measured = [t for t in terms if t < SQNR_CLAMP_DB - MIN_SQNR_DB]
    return min(measured) if measured else None


def threshold() -> dict[str, float]:
    """The default threshold as written in reports."""
    return {
        "sqnr_db": MIN_SQNR_DB,
        "agreement": MIN_AGREEMENT,
        "channel_sqnr_db": MIN_CHANNEL_SQNR_DB,
    }


def _floats(array: np.ndarray) -> np.ndarray:
    """``array`` as floats: float32/float64 as they are, anything else as float64."""
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    """Batches of one output joined along the batch axis (one array: no copy)."""
    if not arrays:
        return np.zeros(0)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)


def _positions(array: np.ndarray) -> int:
    return int(np.prod(array.shape[:-1]))
