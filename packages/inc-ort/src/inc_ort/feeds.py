"""Turning the spec's model inputs (array, tuple, dict, CalibrationDataReader item) into feeds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inc_core.errors import DataError

from ._runtime import onnx

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller must feed (initializers listed as inputs are optional)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # framework tensors
        value = value.numpy()
    return np.asarray(value)


def to_feed(
    model: onnx.ModelProto, inputs: Any, what: str = "calibration data"
) -> dict[str, np.ndarray]:
    """``{input name: array}`` for one batch, checked against the model's inputs."""
    specs = graph_inputs(model)
    names = [s.name for s in specs]
    if isinstance(inputs, Mapping):
        unknown = [k for k in inputs if k not in names]
        missing = [n for n in names if n not in inputs]
        if unknown or missing:
            raise DataError(
                f"{what} names {sorted(map(str, inputs))} do not match the model's inputs {names}"
                + (f"; unknown: {unknown}" if unknown else "")
                + (f"; missing: {missing}" if missing else "")
            )
        values = {k: _as_array(v) for k, v in inputs.items()}
    elif isinstance(inputs, (tuple, list)):
        if len(inputs) != len(names):
            raise DataError(
                f"{what} gives {len(inputs)} arrays but the model has {len(names)} inputs {names}; "
                "give one array per input, in order, or a dict by name"
            )
        values = {n: _as_array(v) for n, v in zip(names, inputs, strict=True)}
    else:
        if len(names) != 1:
            raise DataError(
                f"{what} gives one array but the model has {len(names)} inputs {names}; "
                "give a tuple in input order or a dict by name"
            )
        values = {names[0]: _as_array(inputs)}
    feed = {}
    for spec in specs:
        feed[spec.name] = _checked(spec, values[spec.name], what)
    return feed


def _checked(spec: onnx.ValueInfoProto, value: np.ndarray, what: str) -> np.ndarray:
    tensor = spec.type.tensor_type
    # a negative dim_value is how paddle2onnx (and others) write a dynamic axis
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
        for d in tensor.shape.dim
    ]
    if tensor.HasField("shape") and len(dims) != value.ndim:
        raise DataError(
            f"{what} for input {spec.name!r} has shape {list(value.shape)}, but the model expects "
            f"rank {len(dims)} {['?' if d is None else d for d in dims]}"
        )
    for axis, (want, got) in enumerate(zip(dims, value.shape, strict=False)):
        if want is not None and want != got:
            raise DataError(
                f"{what} for input {spec.name!r} has shape {list(value.shape)}, but the model expects "
                f"{['?' if d is None else d for d in dims]} (axis {axis}: {got} != {want})"
            )
    target = _NP_TYPES.get(tensor.elem_type)
    if target is not None and value.dtype != target:
        if np.issubdtype(target, np.integer) and not np.issubdtype(value.dtype, np.integer):
            raise DataError(
                f"{what} for input {spec.name!r} is {value.dtype}; the model expects {np.dtype(target)}"
            )
        value = value.astype(target)
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        bad = "NaN" if np.isnan(value).any() else "inf"
        raise DataError(
            f"{what} for input {spec.name!r} contains {bad}; calibration data must be finite"
        )
    return value
