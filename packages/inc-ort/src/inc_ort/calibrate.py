"""Calibration: run the fp32 graph with its intermediate tensors exposed, feed inc's observers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from inc_core.calibration import create_observer
from inc_core.errors import DataError
from inc_core.space import TensorRange, TensorRanges

from . import graph, model_io
from ._runtime import onnx, ort
from .feeds import to_feed

log = logging.getLogger(__name__)

#: prefix of entries in TensorRanges that carry per-channel input means (bias correction)
MEAN_PREFIX = "inc.mean:"


def tensors_to_observe(model: onnx.ModelProto, types: Iterable[str]) -> list[str]:
    """Float activations around the ops that may be quantized (inputs and outputs)."""
    wanted_types = set(types) | set(graph.FOLLOW_OPS)
    consts = graph.constants(model)
    # a tensor shape inference could not type is observed too; run time tells its dtype
    # (inference reads the weights' types and dims, never their values: a copy without them)
    others = graph.non_float_tensors(model_io.for_inference(model))
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type not in wanted_types:
            continue
        for name in (*node.input, *node.output):
            if name and name not in consts and name not in others and name not in names:
                names.append(name)
    return names


def session(
    model: onnx.ModelProto,
    outputs: Iterable[str],
    providers: list[str] | None = None,
    data: bytes | None = None,
) -> ort.InferenceSession:
    """An InferenceSession over ``model`` that also returns ``outputs`` (no graph rewrites).

    ``data``: ``model``'s serialized bytes when the caller already has them (the backend
    shares one serialization of a model between its sessions)."""
    existing = {o.name for o in model.graph.output}
    extra = [name for name in dict.fromkeys(outputs) if name not in existing]
    options = ort.SessionOptions()
    # The exposed tensors must be the fp32 graph's own, not those of a fused graph.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    # Between two runs the observers read the last run's tensors in Python: worker threads
    # spinning for the next run would take the cores they need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = providers or ["CPUExecutionProvider"]
    if data is not None or serializable(model):
        # No copy of the model (its weights) to add the outputs: a protobuf parser merges a
        # second occurrence of a message field (the graph) into the first, appending its
        # repeated fields, so the model's bytes followed by those of a model holding only the
        # extra graph outputs are the model with those outputs (calibration and each per-op
        # diagnosis build one such session; the copy cost MiniLM-L3 0.15 s of 2.5 s)
        tail = onnx.ModelProto(
            graph=onnx.GraphProto(output=[_untyped(name) for name in extra])
        ).SerializeToString()
        data = model.SerializeToString() if data is None else data
        return ort.InferenceSession(data + tail, options, providers=providers)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    augmented.graph.output.extend(_untyped(name) for name in extra)
    # model_io reads the data of a detached (>2 GB) model from inc's store
    return model_io.inference_session(augmented, options, providers)


def serializable(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is one proto of in-proto data ``model_io`` would not detach."""
    inline = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return False
        inline += model_io.tensor_bytes(tensor)
    return inline < model_io.LARGE_MODEL_BYTES


def _untyped(name: str) -> onnx.ValueInfoProto:
    """A graph output named ``name`` whose type onnxruntime infers."""
    return onnx.helper.make_empty_tensor_value_info(name)


def run_batches(
    model: onnx.ModelProto,
    dataloader: Iterable[Any],
    tensors: list[str],
    visit: Callable[[str, np.ndarray], None],
    make_session: Callable[[list[str]], Any] | None = None,
) -> int:
    """Run every batch, calling ``visit(tensor, value)``; returns the number of batches.

    ``make_session(tensors)``: the session to run, exposing at least ``tensors`` (default:
    ``session(model, tensors)``)."""
    sess = session(model, tensors) if make_session is None else make_session(tensors)
    count = 0
    for inputs in dataloader:
        feed = to_feed(model, inputs)
        try:
            values = sess.run(tensors, feed)
        except Exception as exc:
            raise DataError(
                f"onnxruntime could not run the model on the calibration data: {exc}"
            ) from exc
        _visit_all(tensors, values, visit)
        # let go of this batch's tensors before the next run: its outputs then reuse their
        # memory (already mapped) instead of new pages, and two batches are never held at once
        # (opennsfw: 0.44 GB of exposed tensors a batch; calibration 2.0-2.4 -> 1.7-2.0 s)
        del values
        count += 1
    if count == 0:
        raise DataError("calibration data yielded no samples; give it at least one batch")
    return count


def _visit_all(
    tensors: list[str], values: list[Any], visit: Callable[[str, np.ndarray], None]
) -> None:
    """``visit`` each tensor's value (the loop's last value goes with this frame)."""
    for name, value in zip(tensors, values, strict=True):
        visit(name, value)


def collect_ranges(
    model: onnx.ModelProto,
    dataloader: Iterable[Any],
    algorithms: Mapping[str, str | tuple[str, Mapping[str, Any]]],
    means_for: Iterable[str] = (),
    make_session: Callable[[list[str]], Any] | None = None,
) -> TensorRanges:
    """Ranges of the tensors in ``algorithms``: tensor -> algorithm (minmax/kl/percentile/mse),
    or (algorithm, observer options such as the dtype/scheme the range is for).

    ``means_for`` adds per-channel means (axis 1, or the last axis for 3-D activations) of those
    tensors as ``inc.mean:<tensor>`` entries, for bias correction. ``make_session``: as for
    ``run_batches``.
    """
    observers = {
        name: create_observer(spec, name=name)
        if isinstance(spec, str)
        else create_observer(spec[0], name=name, **spec[1])
        for name, spec in algorithms.items()
    }
    mean_names = list(means_for)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    seen: set[str] = set()
    # tensors holding -inf/+inf by design (an attention mask written as Where(mask, 0, -inf)):
    # no int8 range exists for them, so they get none and stay float
    unbounded: set[str] = set()

    def visit(name: str, value: np.ndarray) -> None:
        if not np.issubdtype(value.dtype, np.floating):
            return
        seen.add(name)
        if name in observers and name not in unbounded:
            # the observer's min/max pass is the finiteness check (it refuses NaN and inf
            # before counting anything); only then are NaN and inf told apart
            try:
                observers[name].update(value)
            except DataError:
                if np.isfinite(value).all():
                    raise  # another refusal, which names itself
                if np.isnan(value).any():
                    raise DataError(
                        f"tensor {name!r} became NaN on the calibration data; check the inputs "
                        "and the fp32 model"
                    ) from None
                log.info("tensor %r holds inf on the calibration data: it stays float", name)
                unbounded.add(name)
                return
        if name in mean_names:
            axis = value.ndim - 1 if value.ndim == 3 else min(1, value.ndim - 1)
            moved = np.moveaxis(value.astype(np.float64), axis, -1).reshape(-1, value.shape[axis])
            sums[name] = sums.get(name, 0) + moved.sum(0)
            counts[name] = counts.get(name, 0) + moved.shape[0]

    tensors = list(dict.fromkeys([*observers, *mean_names]))
    run_batches(model, dataloader, tensors, visit, make_session)
    ranges: TensorRanges = {}
    for name, observer in observers.items():
        if name not in seen or name in unbounded:
            continue
        lo, hi = observer.range()
        ranges[name] = TensorRange.of(lo, hi)
    for name in mean_names:
        if name not in sums:
            continue
        mean = sums[name] / counts[name]
        ranges[MEAN_PREFIX + name] = TensorRange.of(mean, mean)
    return ranges
