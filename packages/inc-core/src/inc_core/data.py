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


def batch_size(inputs: Any) -> int:
    """Number of samples in one batch of inputs (the leading dimension of the first array)."""
    first = inputs
    while isinstance(first, (tuple, list, Mapping)):
        if not first:
            raise DataError("a batch of inputs is empty")
        first = next(iter(first.values())) if isinstance(first, Mapping) else first[0]
    shape = getattr(first, "shape", None)
    if shape is None or len(shape) == 0:
        return 1
    return int(shape[0])


def take_samples(inputs: Any, count: int) -> Any:
    """The first ``count`` samples of a batch, keeping its structure."""
    if isinstance(inputs, Mapping):
        return {k: take_samples(v, count) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(take_samples(v, count) for v in inputs)
    return inputs[:count]


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
            inputs = take_samples(inputs, max_samples - seen)
            size = max_samples - seen
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
    """The first ``max_samples`` samples for calibration plus a few held-out batches."""
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
            calib.append(take_samples(inputs, keep))
            held.append(drop_samples(inputs, keep))
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


def drop_samples(inputs: Any, count: int) -> Any:
    """A batch without its first ``count`` samples, keeping its structure."""
    if isinstance(inputs, Mapping):
        return {k: drop_samples(v, count) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(drop_samples(v, count) for v in inputs)
    return inputs[count:]


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
