"""The spec's dataloader contract: iterables of ``(input, label)`` or of inputs.

An input may be an array (numpy or a framework tensor), a tuple/list of arrays or a dict of
named arrays. A 2-item tuple or list is read as ``(input, label)``; wrap a two-input model's
inputs as ``((a, b), label)`` or a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, label)`` of one loader item; label is None when the item has none."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def _arrays(inputs: Any) -> list[Any]:
    """The arrays of one batch of inputs, in order (through tuples, lists and dicts)."""
    if isinstance(inputs, Mapping):
        return [a for v in inputs.values() for a in _arrays(v)]
    if isinstance(inputs, (tuple, list)):
        return [a for v in inputs for a in _arrays(v)]
    return [inputs]


def _leading(array: Any) -> int | None:
    """The leading size of an array; None for a scalar (it has no sample axis)."""
    shape = getattr(array, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 else None


def batch_size(inputs: Any) -> int:
    """Number of samples in one batch of inputs: the largest leading size among its arrays.

    Not every input of a model is batched: a recurrent state (``h`` shaped ``[1, 1, 128]``
    next to a ``[64, 576]`` signal), a scale or a scalar is shared by the whole batch, and
    such inputs are usually the smaller ones. A batch of scalars counts as one sample.
    """
    arrays = _arrays(inputs)
    if not arrays:
        raise DataError("a batch of inputs is empty")
    sizes = [s for s in map(_leading, arrays) if s is not None]
    return max(sizes) if sizes else 1


def splittable(inputs: Any) -> bool:
    """Whether a batch can be cut into fewer samples without guessing which axis is the batch.

    Only when every (non-scalar) array has the same leading size: when they differ, one of
    them is not batched along axis 0 and slicing it (a recurrent state, a per-model table)
    would feed the model a tensor it does not accept; which one is not knowable from the data
    alone (an LSTM's ``h`` may be ``[2, 1, 64]`` next to a ``[1, T, F]`` signal), so such a
    batch is kept whole.
    """
    return len({s for s in map(_leading, _arrays(inputs)) if s is not None}) <= 1


def _slice(inputs: Any, index: slice, size: int) -> Any:
    # arrays of the batch's leading size are sliced; scalars and differently sized arrays
    # (inputs shared by the batch) are passed whole
    if isinstance(inputs, Mapping):
        return {k: _slice(v, index, size) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_slice(v, index, size) for v in inputs)
    return inputs[index] if _leading(inputs) == size else inputs


def take_samples(inputs: Any, count: int) -> Any:
    """The first ``count`` samples of a batch, keeping its structure.

    Arrays whose leading size is not the batch's (see ``batch_size``) are kept whole.
    """
    return _slice(inputs, slice(None, count), batch_size(inputs))


def drop_samples(inputs: Any, count: int) -> Any:
    """A batch without its first ``count`` samples, keeping its structure (see ``take_samples``)."""
    return _slice(inputs, slice(count, None), batch_size(inputs))


def _iterate(dataloader: Iterable[Any], what: str) -> Iterator[Any]:
    if hasattr(dataloader, "shape") and hasattr(dataloader, "dtype"):
        # Iterating an array yields single samples without their batch dimension.
        raise DataError(
            f"{what} is a single array of shape {tuple(dataloader.shape)}; pass an iterable of "
            "batches instead, e.g. [(x, y)] or [x[i:i + 32] for i in range(0, len(x), 32)]"
        )
    get_next = getattr(dataloader, "get_next", None)
    if callable(get_next) and not hasattr(dataloader, "__iter__"):
        # onnxruntime's CalibrationDataReader protocol: get_next() until it returns None
        return iter(get_next, None)
    try:
        return iter(dataloader)
    except TypeError as exc:
        raise DataError(
            f"{what} must be iterable (yield (input, label) or inputs), got {type(dataloader).__name__}"
        ) from exc


def model_inputs(
    dataloader: Iterable[Any], max_samples: int | None = None, what: str = "calib_dataloader"
) -> Iterator[Any]:
    """Yield the model inputs of ``dataloader``, stopping after ``max_samples`` samples.

    Raises ``DataError`` when the loader yields nothing, or is not iterable.
    """
    iterator = _iterate(dataloader, what)
    seen = 0
    for batch in iterator:
        inputs, _ = split_batch(batch)
        size = batch_size(inputs)
        if size == 0:
            continue  # an empty batch has nothing to calibrate on
        if max_samples is not None and seen + size > max_samples:
            if splittable(inputs):
                inputs = take_samples(inputs, max_samples - seen)
                size = max_samples - seen
            elif seen:
                break  # a batch that cannot be cut stays out rather than overshoot the count
        seen += size
        yield inputs
        if max_samples is not None and seen >= max_samples:
            break
    if seen == 0:
        raise DataError(f"{what} yielded no samples; give it at least one batch")


# Held-out inputs for the fidelity guard: enough samples for an agreement rate to mean something,
# few enough batches that comparing outputs stays cheap next to calibration.
HELD_OUT_SAMPLES = 16
HELD_OUT_BATCHES = 4


@dataclass
class CalibrationData:
    """Calibration inputs, and the inputs held back from them to check the int8 model's outputs.

    ``how`` says where the held-out inputs came from: ``"beyond calibration"`` (the loader had
    more samples than ``calibration_sampling_size``: calibration is unchanged),
    ``"last calibration batches"`` (held back from calibration), or ``"calibration batch
    reused"`` (one batch only: ranges and the check both see it).
    """

    calib: list[Any]
    held_out: list[Any] = field(default_factory=list)
    how: str = ""


def split_calibration(
    dataloader: Iterable[Any], max_samples: int | None, what: str = "calib_dataloader"
) -> CalibrationData:
    """The first ``max_samples`` samples for calibration plus a few held-out batches.

    A batch that crosses ``max_samples`` is cut there when ``splittable``; otherwise it is
    held out whole (or, as the first batch, calibrated on whole).
    """
    iterator = _iterate(dataloader, what)
    calib: list[Any] = []
    held: list[Any] = []
    seen = 0
    for batch in iterator:
        inputs, _ = split_batch(batch)
        size = batch_size(inputs)
        if size == 0:
            continue
        if max_samples is not None and seen + size > max_samples:
            keep = max_samples - seen
            if splittable(inputs):
                calib.append(take_samples(inputs, keep))
                held.append(drop_samples(inputs, keep))
            elif calib:
                # a batch that cannot be cut (see ``splittable``) is held out whole: calibration
                # stays within max_samples and the guard sees samples calibration did not
                held.append(inputs)
            else:
                calib.append(inputs)  # the first batch is all there is to calibrate on
            seen = max_samples
            break
        calib.append(inputs)
        seen += size
        if max_samples is not None and seen >= max_samples:
            break
    if seen == 0:
        raise DataError(f"{what} yielded no samples; give it at least one batch")
    held_samples = sum(batch_size(b) for b in held)
    if max_samples is not None and seen >= max_samples:
        for batch in iterator:
            if held_samples >= HELD_OUT_SAMPLES or len(held) >= HELD_OUT_BATCHES:
                break
            inputs, _ = split_batch(batch)
            size = batch_size(inputs)
            if size:
                held.append(inputs)
                held_samples += size
    if held:
        return CalibrationData(calib, held, "beyond calibration")
    if len(calib) >= 2:
        count = min(HELD_OUT_BATCHES, max(1, len(calib) // 10))
        return CalibrationData(calib[:-count], calib[-count:], "last calibration batches")
    return CalibrationData(calib, list(calib), "calibration batch reused")


def labelled_batches(
    dataloader: Iterable[Any], what: str = "eval_dataloader"
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(input, label)`` pairs; a loader without labels is an error here."""
    count = 0
    for batch in _iterate(dataloader, what):
        inputs, label = split_batch(batch)
        if label is None:
            raise DataError(
                f"{what} must yield (input, label) pairs for eval_metric; got {type(batch).__name__}"
            )
        count += 1
        yield inputs, label
    if count == 0:
        raise DataError(f"{what} yielded no batches")
