"""The spec's dataloader contract: iterables of ``(input, label)`` or of inputs.

An input may be an array (numpy or a framework tensor), a tuple/list of arrays or a dict of
named arrays. A 2-item tuple or list is read as ``(input, label)``; wrap a two-input model's
inputs as ``((a, b), label)`` or a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


# numpy dtype kinds a model input cannot have: objects, strings, raw bytes, dates
_NOT_NUMERIC = {
    "O": "Python objects",
    "U": "strings",
    "S": "bytes",
    "V": "raw records",
    "M": "datetimes",
    "m": "timedeltas",
}


def _leaves(inputs: Any, name: str = "") -> Iterator[tuple[str, Any]]:
    """``(name, array)`` for each array of a batch of inputs; names say where it sits."""
    if isinstance(inputs, Mapping):
        for key, value in inputs.items():
            yield from _leaves(value, f"{name}[{key!r}]" if name else f"input {key!r}")
    elif isinstance(inputs, (tuple, list)):
        for i, value in enumerate(inputs):
            yield from _leaves(value, f"{name}[{i}]" if name else f"input {i}")
    else:
        yield name or "the input", inputs


def _as_numpy(array: Any) -> np.ndarray | None:
    """A numpy view or copy of a numpy/torch/tf/mxnet array, without importing a framework;
    None when it cannot be read here (a GPU-only dtype, a tensor type we do not know)."""
    try:
        if isinstance(array, np.ndarray):
            return array
        if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch
            return np.asarray(array.detach().cpu().numpy())
        if callable(getattr(array, "asnumpy", None)):  # mxnet
            return np.asarray(array.asnumpy())
        if hasattr(array, "shape") and callable(getattr(array, "numpy", None)):  # tf eager
            return np.asarray(array.numpy())
        return np.asarray(array)
    except Exception:  # e.g. torch bfloat16 has no numpy dtype: the framework will judge it
        return None


@dataclass(frozen=True)
class _Leaf:
    name: str
    dtype: str
    shape: tuple[int, ...]


class BatchCheck:
    """Checks each batch of a loader against the first, so a bad batch fails here with its
    index instead of deep in a framework kernel.

    Every batch must have the same inputs (names / positions), ranks and dtypes as the first,
    numeric dtypes, and finite values. Sizes of axes other than the batch axis may differ
    (token sequences padded per batch are valid input for models with dynamic axes); the
    first batch whose shape differs is remembered in ``shape_change`` so a framework error
    on it can be explained (see ``Session.ranges_for``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.first: list[_Leaf] | None = None
        self.first_index = 0
        self.shape_change = ""

    def __call__(self, inputs: Any, index: int) -> None:
        where = f"{self.what} batch {index}"
        leaves: list[_Leaf] = []
        for name, value in _leaves(inputs):
            if value is None:  # an optional input left out (e.g. attention_mask=None)
                leaves.append(_Leaf(name, "None", ()))
                continue
            array = _as_numpy(value)
            shape = tuple(
                int(d)
                for d in getattr(value, "shape", np.shape(array) if array is not None else ())
            )
            dtype = str(
                getattr(value, "dtype", array.dtype if array is not None else type(value).__name__)
            )
            if array is not None:
                _check_values(where, name, array)
            leaves.append(_Leaf(name, dtype, shape))
        if all(leaf.dtype == "None" for leaf in leaves):
            raise DataError(
                f"{where} has no arrays (got {type(inputs).__name__} {inputs!r:.80}); a batch is "
                "an array, a tuple/list of arrays or a dict of named arrays"
            )
        if self.first is None:
            self.first, self.first_index = leaves, index
            return
        self._compare(where, leaves)

    def _compare(self, where: str, leaves: list[_Leaf]) -> None:
        assert self.first is not None
        first = f"batch {self.first_index}"
        names, first_names = [leaf.name for leaf in leaves], [leaf.name for leaf in self.first]
        if names != first_names:
            raise DataError(
                f"{where} has inputs {_listed(names)} but {first} had {_listed(first_names)}; "
                "every batch must give the model the same inputs"
            )
        for leaf, ref in zip(leaves, self.first, strict=True):
            if leaf.dtype != ref.dtype:
                raise DataError(
                    f"{where}: {leaf.name} has dtype {leaf.dtype} but {first}'s has {ref.dtype}; "
                    "give every batch the same dtypes (cast them, e.g. x.astype('float32'))"
                )
            if len(leaf.shape) != len(ref.shape):
                raise DataError(
                    f"{where}: {leaf.name} has shape {leaf.shape} (rank {len(leaf.shape)}) but "
                    f"{first}'s has shape {ref.shape} (rank {len(ref.shape)}); every batch must "
                    "have the same shape except the batch size (axis 0)"
                )
            if not self.shape_change and leaf.shape[1:] != ref.shape[1:]:
                self.shape_change = (
                    f"{where}: {leaf.name} has shape {leaf.shape} but {first}'s has shape "
                    f"{ref.shape} (only the batch size, axis 0, may differ for a model with "
                    "fixed input shapes)"
                )


def _listed(names: list[str]) -> str:
    return "[" + ", ".join(names) + "]" if names else "[]"


def _check_values(where: str, name: str, array: np.ndarray) -> None:
    kind = array.dtype.kind
    if kind in _NOT_NUMERIC:
        ragged = (
            " (a ragged list of arrays becomes one: pad them to one shape)" if kind == "O" else ""
        )
        raise DataError(
            f"{where}: {name} has dtype {array.dtype} ({_NOT_NUMERIC[kind]}){ragged}; "
            "calibration inputs must be numeric arrays (float, int or bool): encode text or "
            "objects as numbers first (e.g. tokenize)"
        )
    if kind in "fc":
        finite = np.isfinite(array)
        if not finite.all():
            nans = int(np.isnan(array).sum())
            infs = int(array.size - finite.sum()) - nans
            found = ", ".join(
                f"{count} {what}" for count, what in ((nans, "NaN"), (infs, "inf")) if count
            )
            raise DataError(
                f"{where}: {name} contains {found} of {array.size} values; calibration data "
                "must be finite: clean or drop that batch"
            )


def _iterate(dataloader: Iterable[Any], what: str) -> Iterator[Any]:
    if hasattr(dataloader, "shape") and hasattr(dataloader, "dtype"):
        # Iterating an array yields single samples without their batch dimension.
        raise DataError(
            f"{what} is a single array of shape {tuple(dataloader.shape)}; pass an iterable of "
            "batches instead, e.g. [(x, y)] or [x[i:i + 32] for i in range(0, len(x), 32)]"
        )
    if isinstance(dataloader, Mapping):
        # iterating a dict yields its keys: the input names would be read as the data
        keys = ", ".join(repr(k) for k in list(dataloader)[:4])
        raise DataError(
            f"{what} is a single dict of inputs ({keys}): that is one batch, and iterating it "
            "yields its keys; pass an iterable of batches instead, e.g. [feeds] or a list of "
            "such dicts"
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
    dataloader: Iterable[Any],
    max_samples: int | None = None,
    what: str = "calib_dataloader",
    check: BatchCheck | None = None,
) -> Iterator[Any]:
    """Yield the model inputs of ``dataloader``, stopping after ``max_samples`` samples.

    Raises ``DataError`` when the loader yields nothing, is not iterable, or a batch does not
    pass ``check`` (a fresh ``BatchCheck`` when none is given).
    """
    iterator = _iterate(dataloader, what)
    check = check or BatchCheck(what)
    seen = 0
    for index, batch in enumerate(iterator):
        inputs, _ = split_batch(batch)
        size = batch_size(inputs)
        if size == 0:
            continue  # an empty batch has nothing to calibrate on
        check(inputs, index)
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
#: held back from the calibration batches themselves: a tenth of them, more (up to a quarter)
#: while they hold fewer than this many samples (ten single-sample batches held back one, so
#: an argmax agreement was 0 or 1)
HELD_OUT_MIN_SAMPLES = 8


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
    #: the first batch whose non-batch axes differ from the first batch's (``BatchCheck``)
    shape_change: str = ""


def split_calibration(
    dataloader: Iterable[Any], max_samples: int | None, what: str = "calib_dataloader"
) -> CalibrationData:
    """The first ``max_samples`` samples for calibration plus a few held-out batches.

    A batch that crosses ``max_samples`` is cut there when ``splittable``; otherwise it is
    held out whole (or, as the first batch, calibrated on whole).
    """
    iterator = enumerate(_iterate(dataloader, what))
    check = BatchCheck(what)
    calib: list[Any] = []
    held: list[Any] = []
    seen = 0
    for index, batch in iterator:
        inputs, _ = split_batch(batch)
        size = batch_size(inputs)
        if size == 0:
            continue
        check(inputs, index)
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
        for index, batch in iterator:
            if held_samples >= HELD_OUT_SAMPLES or len(held) >= HELD_OUT_BATCHES:
                break
            inputs, _ = split_batch(batch)
            size = batch_size(inputs)
            if size:
                check(inputs, index)
                held.append(inputs)
                held_samples += size
    note = check.shape_change
    if held:
        return CalibrationData(calib, held, "beyond calibration", note)
    if len(calib) >= 2:
        count = _held_back(calib)
        return CalibrationData(calib[:-count], calib[-count:], "last calibration batches", note)
    return CalibrationData(calib, list(calib), "calibration batch reused", note)


def _held_back(calib: list[Any]) -> int:
    """How many of the last calibration batches the fidelity guard holds back: a tenth of them
    (at least one, at most ``HELD_OUT_BATCHES``), or more while they hold fewer than
    ``HELD_OUT_MIN_SAMPLES`` samples, up to a quarter of the batches."""
    count = min(HELD_OUT_BATCHES, max(1, len(calib) // 10))
    most = max(count, len(calib) // 4)
    samples = sum(batch_size(b) for b in calib[-count:])
    while count < most and samples < HELD_OUT_MIN_SAMPLES:
        count += 1
        samples += batch_size(calib[-count])
    return count


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
