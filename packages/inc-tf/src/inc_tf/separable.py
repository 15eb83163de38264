"""SeparableConv2D as the two ops it computes: DepthwiseConv2D, then a 1x1 Conv2D.

Keras runs ``SeparableConv2D`` as ``tf.nn.separable_conv2d``: a depthwise convolution (with the
layer's kernel size, strides, padding and dilation) whose output a pointwise 1x1 convolution
reads, then the bias and the activation. TFLite has no separable kernel either; the converter
emits ``DEPTHWISE_CONV_2D`` + ``CONV_2D``, and each needs its own int8 scales: one for the
depthwise output, one for the pointwise weights. So inc quantizes the two as the ops they are,
on a private copy of the model in which each ``SeparableConv2D`` is replaced by

- ``<name>_depthwise``: ``DepthwiseConv2D`` with the layer's depthwise kernel, no bias, linear;
- ``<name>``: ``Conv2D`` 1x1 with the pointwise kernel, the bias and the activation.

The pointwise conv keeps the layer's name, so the tensor consumers read and a following
BatchNormalization (folded into it) are named as in the user's model; an ``op_name_dict`` key
``<name>`` keeps the pointwise conv fp32, a pattern ``<name>.*`` both. The copy computes the
same function as the layer (same kernels, same order of operations; tests check 1e-5).
"""

from __future__ import annotations

from typing import Any

import keras

from inc_core.errors import ModelError

from . import layers as kl

#: the suffix of the depthwise half's name (Keras forbids "/" in layer names)
DEPTHWISE_SUFFIX = "_depthwise"


def has_separable(model: keras.Model) -> bool:
    return any(kl.layer_type(layer) == "SeparableConv2D" for layer in kl.graph_layers(model))


def halves(layer: Any) -> tuple[keras.layers.DepthwiseConv2D, keras.layers.Conv2D]:
    """The unbuilt DepthwiseConv2D and 1x1 Conv2D that compute ``layer`` (a SeparableConv2D)."""
    config = layer.get_config()
    common = {"data_format": config["data_format"], "dtype": layer.dtype_policy}
    depthwise = keras.layers.DepthwiseConv2D(
        kernel_size=config["kernel_size"],
        strides=config["strides"],
        padding=config["padding"],
        depth_multiplier=config["depth_multiplier"],
        dilation_rate=config["dilation_rate"],
        use_bias=False,
        activation=None,
        name=layer.name + DEPTHWISE_SUFFIX,
        **common,
    )
    pointwise = keras.layers.Conv2D(
        filters=config["filters"],
        kernel_size=1,
        padding="valid",
        use_bias=config["use_bias"],
        activation=config["activation"],
        name=layer.name,
        **common,
    )
    return depthwise, pointwise


def decompose(model: keras.Model) -> keras.Model:
    """A copy of ``model`` (functional, same names elsewhere, same weights) in which every
    SeparableConv2D is a DepthwiseConv2D + 1x1 Conv2D pair; ``model`` is not touched."""
    taken = {layer.name for layer in model.layers}
    pairs: dict[int, tuple[Any, Any]] = {}  # id(original layer) -> its halves, built once
    for layer in kl.graph_layers(model):
        if kl.layer_type(layer) == "SeparableConv2D":
            if layer.name + DEPTHWISE_SUFFIX in taken:
                raise ModelError(
                    f"cannot split SeparableConv2D {layer.name!r} for int8: its depthwise half "
                    f"would be named {layer.name + DEPTHWISE_SUFFIX!r}, which another layer has"
                )
            pairs[id(layer)] = halves(layer)

    def clone(layer: Any) -> Any:
        # a separable layer is never called in the copy (``call`` below runs its halves)
        if id(layer) in pairs:
            return layer
        return type(layer).from_config(layer.get_config())

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if id(layer) in pairs:
            depthwise, pointwise = pairs[id(layer)]
            return pointwise(depthwise(*args))
        return layer(*args, **kwargs)

    # inputs named after the user's input layers (dict batches are keyed by them)
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=str(kl.producer(t).name))
        for t in model.inputs
    ]
    if isinstance(model, keras.Sequential):
        x = inputs[0]
        for layer in kl.graph_layers(model):
            x = call(clone(layer), x)
        copy = keras.Model(inputs[0], x, name=model.name)
    else:
        given = keras.tree.pack_sequence_as(model.input, inputs)
        copy = keras.models.clone_model(
            model, input_tensors=given, clone_function=clone, call_function=call
        )
    _set_weights(copy, model, pairs)
    return copy


def _set_weights(copy: keras.Model, model: keras.Model, pairs: dict[int, tuple[Any, Any]]) -> None:
    for layer in kl.graph_layers(model):
        if id(layer) in pairs:
            depthwise, pointwise = pairs[id(layer)]
            depthwise.set_weights([layer.depthwise_kernel.numpy()])
            rest = [layer.pointwise_kernel.numpy()]
            if layer.use_bias:
                rest.append(layer.bias.numpy())
            pointwise.set_weights(rest)
        elif layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
