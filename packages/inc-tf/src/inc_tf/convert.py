"""Build the int8 TFLite model: frozen FakeQuant ops carrying inc's ranges, then the converter.

The TFLite converter honours FakeQuant min/max (its quantization-aware-training path), so the
scales in the ``.tflite`` file are the TensorFlow convention's scales for inc's calibrated
ranges, not ranges the converter measured itself. Layers the plan keeps in float get no
FakeQuant; the converter leaves them in float32 with Quantize/Dequantize around them.

Every op's layer runs inside a name scope ``inc_op.<layer name>`` while it is traced, so the
TFLite tensors it produces carry the op's name (``diagnose`` maps ops to tensors by it).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from inc_core.errors import ModelError
from inc_core.space import QuantPlan, TensorRange

from . import fakequant as fq
from . import fold
from . import layers as kl
from .points import Point, patch, points, tensors
from .runtime import IoSpec

#: name scope prefix of each op's layer in the traced graph: ``inc_op.<layer name>``
MARKER = "inc_op."

log = logging.getLogger(__name__)


class FrozenQuantizer:
    """FakeQuant ops with constant bounds: calibrated ranges for activations, weights' own."""

    def __init__(
        self, ranges: Mapping[str, TensorRange], kernels: Mapping[str, np.ndarray]
    ) -> None:
        self.ranges = ranges
        self.kernels = kernels  # read before tracing: variables have no value inside a graph

    def activation(self, key: str, x: Any, dtype: str, owner: bool) -> Any:
        if key not in self.ranges:
            raise ModelError(
                f"no calibrated range for tensor {key!r}; calibrate with this plan first"
            )
        rng = self.ranges[key]
        return fq.frozen(x, fq.bounds(rng.min, rng.max, dtype))

    def kernel(self, layer: Any, point: Point) -> Any:
        assert point.weight is not None
        kernel = self.kernels[layer.name]
        bounds = fq.weight_bounds(
            kernel, point.weight.dtype, point.weight.granularity, point.depthwise
        )
        return fq.frozen_kernel(kernel, bounds, point.depthwise)


def io_spec(model: keras.Model) -> IoSpec:
    """Names and structure of the model's inputs and outputs, as the runtime needs them."""
    outputs = model.outputs
    structure = getattr(model, "_outputs_struct", outputs)
    if isinstance(structure, Mapping):
        kind, keys = "dict", [str(k) for k in structure]
    elif isinstance(structure, (list, tuple)) and len(outputs) > 1:
        kind, keys = "list", [f"output_{i}" for i in range(len(outputs))]
    else:
        kind, keys = "single", ["output_0"]
    return IoSpec(
        inputs=[f"input_{i}" for i in range(len(model.inputs))],
        input_dtypes=[str(np.dtype(t.dtype)) for t in model.inputs],
        outputs=keys,
        output_kind=kind,
        op_shapes={
            layer.name: [None if d is None else int(d) for d in layer.output.shape[1:]]
            for layer in kl.quantizable(model)
        },
    )


def _flat(outputs: Any, spec: IoSpec) -> list[Any]:
    """Outputs as a list in ``spec.outputs`` order (the TFLite model's output order)."""
    if spec.output_kind == "dict":
        return [outputs[k] for k in spec.outputs]
    if spec.output_kind == "list":
        return list(outputs)
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    return [outputs]


def to_tflite(copy: keras.Model, spec: IoSpec, quantized: bool) -> bytes:
    """Trace ``copy`` (already patched when ``quantized``) and convert it to a flatbuffer."""
    signature = [
        tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=name)
        for name, t in zip(spec.inputs, copy.inputs, strict=True)
    ]

    @tf.function(input_signature=signature)
    def serve(*args: Any) -> list[Any]:
        structure = getattr(copy, "_inputs_struct", None)  # functional: list, dict or tensor
        if structure is None:  # Sequential: one input
            inputs = args[0]
        else:
            inputs = keras.tree.pack_sequence_as(structure, list(args))
        return _flat(copy(inputs, training=False), spec)

    # Keras 3 variables survive the converter's own freezing as resource variables (float
    # READ_VARIABLE ops); fold them into constants first.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": inputs stay float32 on purpose.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        try:
            return bytes(converter.convert())
        except Exception as exc:
            raise ModelError(f"the TFLite converter rejected the model: {exc}") from exc


def quantize(
    model: keras.Model,
    plan: QuantPlan,
    ranges: Mapping[str, TensorRange],
    fold_batchnorm: bool = True,
) -> tuple[bytes, IoSpec]:
    """The int8 flatbuffer of ``model`` under ``plan`` with ``ranges``; ``model`` is not touched.

    ``fold_batchnorm`` must match how the ranges were found: PTQ calibrates the folded model,
    QAT trains (and learns ranges) without folding."""
    copy = fold.graph_copy(model, fold_batchnorm)
    found = points(copy, plan)
    kernels = {
        layer.name: np.asarray(layer.kernel.numpy(), dtype=np.float32)
        for layer in kl.graph_layers(copy)
        if layer.name in found and found[layer.name].weight is not None
    }
    patch(copy, found, FrozenQuantizer(ranges, kernels))
    mark(copy, plan, found)
    spec = io_spec(copy)
    return to_tflite(copy, spec, quantized=bool(found)), spec


def mark(copy: keras.Model, plan: QuantPlan, found: Mapping[str, Point]) -> None:
    """Run each op's layer of ``copy`` (patched or not) in its ``inc_op.<name>`` name scope;
    end a float op whose output an int8 op reads with a float barrier (see ``_barrier``)."""
    quantized = set(tensors(copy, found)) if found else set()
    for layer in kl.quantizable(copy):
        if layer.name not in plan.ops:
            continue
        call = layer.call if "call" in vars(layer) else kl.original_call(layer)
        barrier = layer.name not in found and layer.name in quantized
        layer.call = _marked(MARKER + layer.name, call, barrier)


def _marked(scope: str, call: Any, barrier: bool) -> Any:
    def marked(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        with tf.name_scope(scope):
            out = call(inputs, *args, **kwargs)
            return _barrier(out) if barrier else out

    return marked


def _barrier(x: Any) -> Any:
    """``x`` itself, computed by a float op the converter can neither remove nor quantize.

    The converter turns an op into int8 when its input and output tensors both carry
    FakeQuant ranges, even where the plan keeps it in float: a float conv between two int8
    ops, or before a pooling op whose output an int8 op reads. With this op after it, the
    float op's output has no range, so it stays float; the int8 consumer gets a Quantize.
    A mean over a new axis of size 1 is exact and is not folded away (``x + 0``, ``x * 1``
    and identities are; an added constant is even folded into the next op's bias).
    """
    return tf.reduce_mean(tf.expand_dims(x, -1), axis=-1)
