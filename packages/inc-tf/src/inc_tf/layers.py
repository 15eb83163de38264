"""The Keras side of the plugin: which layers are quantizable ops, and their math with a given kernel.

An op is a Keras layer, named by ``layer.name``. A tensor is named after the layer that produces
it (a model input after its ``InputLayer``); layers that only move values around (Flatten,
pooling, Dropout, ...) are looked through, so the range of a Dense layer's input after a
Flatten is the range of the convolution output before it. That keeps one range per value and
lets the TFLite converter give the chain a single scale instead of requantizing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from keras.src.models.functional import Functional

from inc_core.errors import ModelError

#: layer class -> axis of its kernel that holds output channels (None: activation-only op)
KERNEL_OPS: dict[str, int] = {"Conv1D": -1, "Conv2D": -1, "DepthwiseConv2D": -1, "Dense": -1}
#: activation-only ops: their inputs and output are quantized, they have no weight. (PReLU is
#: not one: TFLite's int8 PRELU is a reference kernel, measured 1.8x slower than float on
#: MTCNN's ONet, where XNNPACK runs the float one)
ACTIVATION_OPS: tuple[str, ...] = ("Add", "Concatenate")
#: merge layers: ``call`` takes the list of their inputs
MERGE_OPS: tuple[str, ...] = ("Add", "Concatenate")
#: activations TFLite fuses into an int8 conv / fully connected kernel; with another one
#: (softmax, sigmoid, ...) the kernel's own output has no range and the converter keeps it float
FUSED_ACTIVATIONS: tuple[str, ...] = ("linear", "relu", "relu6")
QUANTIZABLE: tuple[str, ...] = (*KERNEL_OPS, *ACTIVATION_OPS)
#: layers whose output values are a subset of their input values: ranges are looked through
PASSTHROUGH: tuple[str, ...] = (
    "Flatten",
    "Reshape",
    "MaxPooling1D",
    "MaxPooling2D",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "Permute",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "Cropping1D",
    "Cropping2D",
    "GaussianDropout",
    "ActivityRegularization",
    "Identity",
)
#: ops whose weights can be per channel in a TFLite int8 model (FullyConnected cannot)
PER_CHANNEL_OPS: tuple[str, ...] = ("Conv1D", "Conv2D", "DepthwiseConv2D")


def layer_type(layer: Any) -> str:
    return type(layer).__name__


def runs_int8(layer: Any) -> bool:
    """Whether TFLite can run ``layer`` as one int8 kernel (its activation fuses into it)."""
    if layer_type(layer) not in KERNEL_OPS:
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "linear") in FUSED_ACTIVATIONS


def is_graph_model(model: Any) -> bool:
    return isinstance(model, (keras.Sequential, Functional))


def check_graph_model(model: Any) -> None:
    """Raise ``ModelError`` unless ``model`` is a built Sequential or functional Keras model."""
    if not isinstance(model, keras.Model):
        raise ModelError(f"expected a keras.Model, got {type(model).__name__}")
    if not is_graph_model(model):
        raise ModelError(
            f"{type(model).__name__} is a subclassed Keras model: inc-tf quantizes layer by layer and "
            "needs the layer graph, which only Sequential and functional models have. Write the same "
            "layers as keras.Sequential([...]) or keras.Model(inputs, outputs) (the weights carry over "
            "with set_weights), then quantize that."
        )
    if not model.built or not model.inputs:
        raise ModelError(
            f"the Keras model {model.name!r} is not built: give it an input shape "
            "(keras.Input(shape) as its first layer) or call it once on a batch"
        )


def feed(model: keras.Model, arrays: list[Any]) -> Any:
    """``arrays`` (one per model input) in the structure ``model``'s call expects: a functional
    model saved with a list of one input (Keras 2 files) wants ``[x]``, and warns at a bare
    ``x``; a Sequential model takes ``x``."""
    structure = getattr(model, "_inputs_struct", None)
    if structure is None:
        return arrays[0] if len(arrays) == 1 else list(arrays)
    return keras.tree.pack_sequence_as(structure, list(arrays))


def graph_layers(model: keras.Model) -> list[Any]:
    """Layers in model (topological) order, without InputLayers."""
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def quantizable(model: keras.Model) -> list[Any]:
    """The layers that are ops, in model order (a layer called more than once is not: its
    calls would need one range per call, and a TFLite tensor has one)."""
    found = []
    for layer in graph_layers(model):
        if layer_type(layer) in QUANTIZABLE and not is_shared(layer):
            found.append(layer)
    return found


def is_shared(layer: Any) -> bool:
    return len(layer._inbound_nodes) > 1


def producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def source(tensor: Any) -> tuple[str, Any]:
    """(name, keras tensor) of the value whose range ``tensor`` has, looking through PASSTHROUGH."""
    while True:
        layer = producer(tensor)
        if layer_type(layer) in PASSTHROUGH and not isinstance(layer.input, (list, tuple)):
            tensor = layer.input
            continue
        return layer.name, tensor


def inputs_of(layer: Any) -> list[Any]:
    value = layer.input
    return list(value) if isinstance(value, (list, tuple)) else [value]


def kernel_of(layer: Any) -> Any:
    return layer.kernel


def linear(layer: Any, x: Any, kernel: Any) -> Any:
    """``layer``'s forward pass on ``x`` with ``kernel`` in place of its own (fake-quantized)."""
    kind = layer_type(layer)
    if kind in ("Conv1D", "Conv2D"):
        out = layer.convolution_op(x, kernel)
    elif kind == "DepthwiseConv2D":
        out = ops.depthwise_conv(
            x,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    elif kind == "Dense" and len(x.shape) > 2 and None not in x.shape[1:]:
        # (batch, ..., in) as one 2-D matmul: the converter then emits a single int8
        # FullyConnected with its bias fused, where a broadcast matmul stays in float
        flat = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
        if getattr(layer, "bias", None) is not None:
            flat = ops.add(flat, layer.bias)
        out = ops.reshape(flat, (-1, *x.shape[1:-1], kernel.shape[-1]))
        return layer.activation(out) if layer.activation is not None else out
    elif kind == "Dense":
        out = ops.matmul(x, kernel)
    else:  # pragma: no cover - guarded by KERNEL_OPS
        raise ModelError(f"no kernel math for {kind}")
    if getattr(layer, "bias", None) is not None:
        bias = layer.bias
        if kind != "Dense" and getattr(layer, "data_format", "channels_last") == "channels_first":
            bias = ops.reshape(bias, (1, -1) + (1,) * (len(out.shape) - 2))
        out = ops.add(out, bias)
    if layer.activation is not None:
        out = layer.activation(out)
    return out


def original_call(layer: Any) -> Callable[..., Any]:
    """The class's own ``call`` bound to ``layer`` (ignores a patched instance attribute)."""
    call: Callable[..., Any] = type(layer).call.__get__(layer, type(layer))
    return call
