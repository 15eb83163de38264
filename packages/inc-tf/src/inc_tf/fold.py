"""BatchNormalization folding for post-training quantization.

``Conv/Dense -> BatchNormalization [-> ReLU/Activation]`` becomes one layer with the BN's
inference-time affine transform folded into its kernel and bias and the activation fused, as
INC's TensorFlow graph rewriter and the TFLite converter do for float graphs. In the int8 model
the op then runs as a single int8 conv with a fused ReLU instead of int8 conv, float BN, int8.

Folding happens on inc's private copy of the model (``graph_copy``, here beside the folding
it may apply); the BN and the
activation layer are replaced by ``Identity`` layers with their names, so rules written for the
user's layer names still apply. Quantization-aware training does not fold (the fake quantization
it learned sits before the BN), so a QAT model with BN keeps its BN in float.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from . import layers as kl

_FOLDABLE = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


class Identity(keras.layers.Layer):
    """Stands where a folded BN or fused activation was (takes their ``training``/``mask``)."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return inputs

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _only_consumer(layer: Any) -> Any | None:
    nodes = layer._outbound_nodes
    return nodes[0].operation if len(nodes) == 1 else None


def _fusable_activation(layer: Any) -> str | None:
    kind = kl.layer_type(layer)
    if kind == "ReLU":
        plain = (
            layer.max_value is None
            and not float(layer.negative_slope)
            and not float(layer.threshold)
        )
        return "relu" if plain else None
    if kind == "Activation":
        name = getattr(layer.activation, "__name__", "")
        return name if name in ("relu", "relu6") else None
    return None


def plan_folds(model: keras.Model) -> dict[str, tuple[str, str | None, str | None]]:
    """op layer name -> (bn layer name, activation layer name or None, activation or None)."""
    folds = {}
    for layer in kl.graph_layers(model):
        if kl.layer_type(layer) not in _FOLDABLE or kl.is_shared(layer):
            continue
        if getattr(layer.activation, "__name__", "linear") != "linear":
            continue
        bn = _only_consumer(layer)
        if bn is None or kl.layer_type(bn) != "BatchNormalization" or kl.is_shared(bn):
            continue
        if bn.axis not in (-1, len(layer.output.shape) - 1):
            continue
        act_layer = _only_consumer(bn)
        activation = _fusable_activation(act_layer) if act_layer is not None else None
        fused = act_layer.name if activation and act_layer is not None else None
        folds[layer.name] = (bn.name, fused, activation)
    return folds


def _bn_affine(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with bn(x) == x * scale + shift in inference mode."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.gamma is not None else 1.0
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def folded_weights(op: Any, bn: Any) -> list[np.ndarray]:
    """[kernel, bias] of ``op`` with ``bn`` folded in."""
    kernel = np.asarray(op.kernel.numpy(), np.float64)
    channels = kernel.shape[-1] * (
        kernel.shape[-2] if kl.layer_type(op) == "DepthwiseConv2D" else 1
    )
    bias = np.asarray(op.bias.numpy(), np.float64) if op.bias is not None else np.zeros(channels)
    scale, shift = _bn_affine(bn)
    if kl.layer_type(op) == "DepthwiseConv2D":
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]


def clone_function(model: keras.Model, folds: dict[str, tuple[str, str | None, str | None]]) -> Any:
    """A ``clone_model`` clone_function that builds the folded layers."""
    absorbed = {bn for bn, _, _ in folds.values()} | {a for _, a, _ in folds.values() if a}

    def clone(layer: Any) -> Any:
        if layer.name in absorbed:
            return Identity(name=layer.name)
        config = layer.get_config()
        if layer.name in folds:
            config["use_bias"] = True
            config["activation"] = folds[layer.name][2] or "linear"
        return type(layer).from_config(config)

    return clone


def set_folded_weights(
    copy: keras.Model, model: keras.Model, folds: dict[str, tuple[str, str | None, str | None]]
) -> None:
    """Copy weights layer by layer into ``copy``, folded where ``folds`` says."""
    for layer in kl.graph_layers(copy):
        source = model.get_layer(layer.name)
        if layer.name in folds:
            layer.set_weights(folded_weights(source, model.get_layer(folds[layer.name][0])))
        elif layer.weights:
            layer.set_weights(source.get_weights())


def graph_copy(model: keras.Model, fold_batchnorm: bool = False) -> keras.Model:
    """A copy of ``model`` with the same layer names and weights and a free batch dimension;
    with ``fold_batchnorm``, BatchNormalization folded into the Conv/Dense before it."""
    inputs = [
        keras.Input(batch_shape=(None, *t.shape[1:]), dtype=t.dtype, name=str(kl.producer(t).name))
        for t in model.inputs
    ]
    given = (
        inputs[0]
        if isinstance(model, keras.Sequential)
        else keras.tree.pack_sequence_as(model.input, inputs)
    )
    folds = plan_folds(model) if fold_batchnorm else {}
    if not folds:
        copy = keras.models.clone_model(model, input_tensors=given)
        copy.set_weights(model.get_weights())
        return copy
    copy = keras.models.clone_model(
        model, input_tensors=given, clone_function=clone_function(model, folds)
    )
    set_folded_weights(copy, model, folds)
    return copy
