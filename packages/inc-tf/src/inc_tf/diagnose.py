"""Per-op outputs and kernels, for the core's guards: which op's int8 output hurts, what runs.

fp32: the layers' outputs of inc's private, BatchNormalization-folded copy of the Keras model
(what the int8 model computes per op: a folded ``Conv -> BN -> ReLU`` is one op whose output
is after the ReLU). int8: the TFLite interpreter with all intermediate tensors kept; each op's
tensors carry its ``inc_op.<layer name>`` name scope (``convert.MARKER``), int8 tensors are
dequantized with their scale and zero point. An op whose TFLite output the converter fused
with another layer's (a separate activation layer, say) is left out: its tensor is not the
layer's output.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from . import fold
from . import layers as kl
from .convert import MARKER
from .runtime import TfLiteModel, _interpreter_class

_SCOPE = re.compile(r"(?:^|/)" + re.escape(MARKER) + r"([^/;]+)/")
#: TFLite ops that only move a quantized tensor between int8 and float
_CASTS = ("QUANTIZE", "DEQUANTIZE")
#: name parts the converter adds to a tensor's name that are not another layer's computation
_HARMLESS = re.compile(r"^(Identity(_\d+)?|tfl\.[^/]*|FakeQuantWithMinMaxVars\w*)$")


def keras_outputs(
    model: keras.Model, arrays: list[np.ndarray], ops: Sequence[str]
) -> dict[str, np.ndarray]:
    """The named ops' outputs of the folded copy of ``model`` on one batch."""
    copy = fold.graph_copy(model, fold_batchnorm=True)
    names = [layer.name for layer in kl.quantizable(copy) if layer.name in set(ops)]
    if not names:
        return {}
    probe = keras.Model(copy.inputs, [copy.get_layer(n).output for n in names])
    values = probe(arrays, training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}


@dataclass(frozen=True)
class OpTensor:
    """Where an op is in a TFLite model: the builtin that computes it and its output tensor."""

    kernel: str  # e.g. "CONV_2D"
    int8: bool  # the kernel reads and writes int8
    tensor: int
    #: the output tensor's name says other layers' computation was fused into it (a separate
    #: activation layer, say): it is not the op's own output
    fused: bool


#: builtins that compute an op (in this order of preference when an op's scope has several:
#: a float Dense reads a barrier ADD before its FULLY_CONNECTED)
_KERNELS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "BATCH_MATMUL",
    "ADD",
    "CONCATENATION",
)
#: builtins that only compute shapes
_SHAPE_OPS = ("SHAPE", "PACK", "STRIDED_SLICE", "GATHER", "REDUCE_PROD", "CONCATENATION_SHAPE")


def _owners(name: str) -> set[str]:
    return {m.group(1) for m in _SCOPE.finditer(name)}


def _computing_owners(name: str) -> set[str]:
    """The ops whose computation a tensor name mentions (not just a FakeQuant they put on it)."""
    parts = [p for p in name.split(";") if not _harmless(p)]
    return set().union(*(_owners(p) for p in parts)) if parts else _owners(name)


def _harmless(part: str) -> bool:
    return bool(_HARMLESS.match(part.rsplit("/", 1)[-1])) or part.endswith(("/min", "/max"))


def _fused(name: str, op: str) -> bool:
    # another op's or a non-op layer's computation (".../relu_1/Relu") is in the name
    return any(_owners(p) != {op} for p in name.split(";") if not _harmless(p))


def op_tensors(interpreter: Any) -> dict[str, OpTensor]:
    """Op name -> its kernel and output tensor, found by the ``inc_op.`` name scopes.

    The output is that of the last builtin in the op's scope (Quantize/Dequantize and shape
    arithmetic aside): a Dense on a 3-D input runs as reshape, fully connected, reshape, and
    the layer's output is the last reshape's.
    """
    by_index = {d["index"]: d for d in interpreter.get_tensor_details()}
    kernels: dict[str, tuple[int, str, bool]] = {}
    outputs: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        kind = op["op_name"]
        if kind in _CASTS or kind in _SHAPE_OPS or kind == "DELEGATE" or not len(op["outputs"]):
            continue
        out = by_index.get(int(op["outputs"][0]))
        if out is None:
            continue
        inputs = [by_index[int(i)] for i in op["inputs"] if int(i) in by_index]
        int8 = bool(inputs) and all(np.dtype(d["dtype"]) == np.int8 for d in (inputs[0], out))
        for owner in _computing_owners(out["name"]):
            outputs[owner] = int(out["index"])
            rank = _KERNELS.index(kind) if kind in _KERNELS else len(_KERNELS)
            if owner not in kernels or rank < kernels[owner][0]:
                kernels[owner] = (rank, kind, int8)
    return {
        owner: OpTensor(
            kernel=kernels[owner][1],
            int8=kernels[owner][2],
            tensor=index,
            fused=_fused(by_index[index]["name"], owner),
        )
        for owner, index in outputs.items()
    }


def tflite_outputs(model: TfLiteModel, inputs: Any, ops: Sequence[str]) -> dict[str, np.ndarray]:
    """The named ops' outputs of the int8 model on one batch, dequantized to float32.

    A fresh interpreter that keeps every intermediate tensor (slower, more memory: used only
    for this diagnosis, never for the model's own calls).
    """
    arrays = model._feeds(inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        interpreter = _interpreter_class()(
            model_content=model.content,
            num_threads=model.num_threads,
            experimental_preserve_all_tensors=True,
        )
    for detail, array in zip(interpreter.get_input_details(), arrays, strict=True):
        interpreter.resize_tensor_input(detail["index"], array.shape, strict=False)
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), arrays, strict=True):
        interpreter.set_tensor(detail["index"], array)
    interpreter.invoke()
    where = op_tensors(interpreter)
    by_index = {d["index"]: d for d in interpreter.get_tensor_details()}
    result: dict[str, np.ndarray] = {}
    for name in ops:
        located = where.get(name)
        if located is None or located.fused:
            continue
        value = _dequantized(interpreter.get_tensor(located.tensor), by_index[located.tensor])
        shaped = _as_keras(value, model.spec.op_shapes.get(name), len(arrays[0]))
        if shaped is not None:
            result[name] = shaped
    return result


def _as_keras(value: np.ndarray, shape: list[int | None] | None, batch: int) -> np.ndarray | None:
    """``value`` in the layer's Keras shape (the converter may keep it flattened, e.g. a 3-D
    Dense between two others); None when the sizes cannot agree."""
    if shape is None:
        return value
    if value.shape[1:] == tuple(shape) and value.shape[0] == batch:
        return value
    known = int(np.prod([d for d in shape if d is not None], dtype=np.int64))
    unknown = sum(d is None for d in shape)
    if unknown > 1 or value.size % (batch * known):
        return None
    if not unknown and value.size != batch * known:
        return None
    target = (batch, *(-1 if d is None else d for d in shape))
    return value.reshape(target)


def _dequantized(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.integer):
        return np.asarray(value, dtype=np.float32)
    params = detail["quantization_parameters"]
    scale = np.asarray(params["scales"], dtype=np.float32)
    zero = np.asarray(params["zero_points"], dtype=np.float32)
    if scale.size > 1:  # per channel along quantized_dimension
        shape = [1] * value.ndim
        shape[int(params["quantized_dimension"])] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((value.astype(np.float32) - zero) * scale).astype(np.float32)


def runs_as(model: TfLiteModel) -> dict[str, str]:
    """Op name -> the TFLite builtin that computes it and its data type, e.g. "CONV_2D (int8)"."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        interpreter = _interpreter_class()(model_content=model.content)
    interpreter.allocate_tensors()
    return {
        name: f"{where.kernel} ({'int8' if where.int8 else 'fp32'})"
        for name, where in op_tensors(interpreter).items()
    }
