"""Where fake quantization goes for a plan: per quantized layer, which tensors and schemes.

The same points drive calibration (which tensors to observe), PTQ export (frozen FakeQuant ops)
and QAT (trainable-through fake quantization), so PTQ and QAT produce the same int8 graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import keras

from inc_core.space import QuantPlan, TensorScheme

from . import layers as kl


@dataclass(frozen=True)
class Point:
    """One quantized layer: its input tensors (by name), its output tensor, and schemes.

    ``owns`` says, per input, whether this layer updates that tensor's range during QAT (the
    producer owns its output when it is quantized itself; otherwise the first consumer does).
    """

    name: str
    type: str
    inputs: tuple[str, ...]
    owns: tuple[bool, ...]
    output: str
    activation: TensorScheme
    weight: TensorScheme | None

    @property
    def depthwise(self) -> bool:
        return self.type == "DepthwiseConv2D"


def points(model: keras.Model, plan: QuantPlan) -> dict[str, Point]:
    """The quantized layers of ``model`` under ``plan``, in model order."""
    chosen = {
        layer.name: layer
        for layer in kl.quantizable(model)
        if layer.name in plan.ops and plan.ops[layer.name].quantized
    }
    found: dict[str, Point] = {}
    owned: set[str] = set(chosen)
    for name, layer in chosen.items():
        op = plan.ops[name]
        assert op.activation is not None
        keys, owns = [], []
        for tensor in kl.inputs_of(layer):
            key, _ = kl.source(tensor)
            keys.append(key)
            owns.append(key not in owned)
            owned.add(key)
        found[name] = Point(
            name=name,
            type=kl.layer_type(layer),
            inputs=tuple(keys),
            owns=tuple(owns),
            output=name,
            activation=op.activation,
            weight=op.weight if kl.layer_type(layer) in kl.KERNEL_OPS else None,
        )
    return found


def tensors(model: keras.Model, found: Mapping[str, Point]) -> dict[str, tuple[Any, TensorScheme]]:
    """tensor name -> (keras tensor, activation scheme of its first user) for every tensor the
    points use (the scheme picks the calibration algorithm and what it optimises for)."""
    by_layer = {layer.name: layer for layer in kl.graph_layers(model)}
    result: dict[str, tuple[Any, TensorScheme]] = {}
    for point in found.values():
        layer = by_layer[point.name]
        for key, tensor in zip(point.inputs, kl.inputs_of(layer), strict=True):
            result.setdefault(key, (kl.source(tensor)[1], point.activation))
        result.setdefault(point.output, (layer.output, point.activation))
    return result


class Quantizer(Protocol):
    def activation(self, key: str, x: Any, dtype: str, owner: bool) -> Any:
        """``x`` (the value of tensor ``key``) fake-quantized as ``dtype``."""

    def kernel(self, layer: Any, point: Point) -> Any:
        """``layer``'s kernel fake-quantized as ``point.weight`` says."""


def quantized_call(layer: Any, point: Point, quantizer: Quantizer) -> Callable[..., Any]:
    """A replacement for ``layer.call`` that fake-quantizes inputs, kernel and output."""
    dtype = point.activation.dtype
    is_kernel_op = point.type in kl.KERNEL_OPS
    original = kl.original_call(layer)

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if is_kernel_op:
            x = quantizer.activation(point.inputs[0], inputs, dtype, point.owns[0])
            y = kl.linear(layer, x, quantizer.kernel(layer, point))
        else:
            given = inputs if point.type in kl.MERGE_OPS else [inputs]
            xs = [
                quantizer.activation(key, t, dtype, owns)
                for key, t, owns in zip(point.inputs, given, point.owns, strict=True)
            ]
            y = original(xs if point.type in kl.MERGE_OPS else xs[0], *args, **kwargs)
        return quantizer.activation(point.output, y, dtype, True)

    return call


def patch(model: keras.Model, found: Mapping[str, Point], quantizer: Quantizer) -> list[Any]:
    """Replace ``call`` on each quantized layer of ``model`` (an instance attribute; see unpatch)."""
    patched = []
    for layer in kl.graph_layers(model):
        if layer.name in found:
            layer.call = quantized_call(layer, found[layer.name], quantizer)
            patched.append(layer)
    return patched


def unpatch(patched: list[Any]) -> None:
    """Give each layer its class's own ``call`` back."""
    for layer in patched:
        if "call" in vars(layer):
            del layer.call
