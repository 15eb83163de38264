"""inc's quantizers: subclasses of onnxruntime's own QDQ and QOperator quantizers.

onnxruntime walks the graph and writes the Q/DQ (or QLinear*) nodes; inc decides *what* is
quantized and *with which numbers*. The subclasses receive a ``QuantizerSpec`` — which nodes,
and for every tensor the scale and zero point computed by ``inc_core.scheme`` from inc's
calibrated ranges — and hand them to the parent as ``TensorQuantOverrides``, the parent's
documented way of taking fixed quantization parameters. So the numbers in the graph are
exactly the core's reference math.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType

from inc_core.errors import ModelError

from ._runtime import onnx, ortq
from .model_io import PROTOBUF_LIMIT

log = logging.getLogger(__name__)

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
NP_TYPES = {"int8": np.int8, "uint8": np.uint8}

# Constructor arguments renamed across onnxruntime releases: our name -> older names.
_RENAMED = {"activation_qType": ("input_qType",)}


@dataclass
class QuantizerSpec:
    """What inc asks onnxruntime's quantizer to do, in onnxruntime's own vocabulary."""

    nodes_to_quantize: list[str]
    nodes_to_exclude: list[str] = field(default_factory=list)
    op_types_to_quantize: list[str] = field(default_factory=list)
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    #: tensor -> (rmin, rmax) of the calibrated activations (onnxruntime's tensors_range)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: tensor -> onnxruntime override list: [{"scale", "zero_point", "quant_type"[, "axis"]}, ...]
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra_options: dict[str, Any] = field(default_factory=dict)
    #: activations to leave in float even though their producer is quantized (QDQ only)
    float_tensors: set[str] = field(default_factory=set)

    def options(self) -> dict[str, Any]:
        options = {
            # Keep inc's weight scales: onnxruntime would otherwise enlarge a weight scale whose
            # int32 bias scale (input_scale * weight_scale) it finds too small.
            "QDQDisableWeightAdjustForInt32Bias": True,
            # Contrib-domain ops defeat ONNX shape inference; their outputs are float here.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
            **self.extra_options,
        }
        if self.overrides:
            options["TensorQuantOverrides"] = self.overrides
        return options


def _tensors_range(spec: QuantizerSpec) -> Any:
    ranges = {
        name: ortq.calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for name, (lo, hi) in spec.ranges.items()
    }
    return ortq.calibrate.TensorsData(ortq.CalibrationMethod.MinMax, ranges)


def _common_kwargs(model: onnx.ModelProto, spec: QuantizerSpec, static: bool) -> dict[str, Any]:
    return {
        "model": model,
        "per_channel": spec.per_channel,
        "reduce_range": spec.reduce_range,
        "weight_qType": QUANT_TYPES[spec.weight_type].tensor_type,
        "activation_qType": QUANT_TYPES[spec.activation_type].tensor_type,
        "tensors_range": _tensors_range(spec) if static else None,
        "nodes_to_quantize": list(spec.nodes_to_quantize),
        "nodes_to_exclude": list(spec.nodes_to_exclude),
        "op_types_to_quantize": list(spec.op_types_to_quantize),
        "extra_options": spec.options(),
    }


class IncQDQQuantizer(QDQQuantizer):  # type: ignore[misc]
    """onnxruntime's QDQ quantizer with inc's nodes, schemes and scales."""

    def __init__(self, model: onnx.ModelProto, spec: QuantizerSpec) -> None:
        self.inc_spec = spec
        values = _common_kwargs(model, spec, static=True)
        params = inspect.signature(QDQQuantizer.__init__).parameters
        if "mode" in params:  # releases before 1.16 took mode/static here too
            values["mode"] = QuantizationMode.QLinearOps
        if "static" in params:
            values["static"] = True
        QDQQuantizer.__init__(self, **_renamed(values, params))

    def quantize_activation_tensor(self, tensor_name: str) -> Any:
        # inc's per-tensor decision: an output no quantized op reads stays float.
        if tensor_name in self.inc_spec.float_tensors:
            return None
        return super().quantize_activation_tensor(tensor_name)

    def _dup_initializer(self, initializer: onnx.TensorProto) -> onnx.TensorProto:
        """A copy of a bias two quantized nodes share, under a name no tensor of the graph has.

        onnxruntime names the copy ``<bias><n>`` with ``n`` past the initializers' own suffixes
        only (onnxruntime#24705); converters number their tensors the same way (tf2onnx: bias
        ``a;a``, the Conv output ``a;a2``), so the copy could shadow an activation and the
        runtime would read the bias where the activation belongs.
        """
        taken = tensor_names(self.model.model.graph)
        suffix = self.model.get_largest_initializer_name_suffix(initializer.name) + 1
        while f"{initializer.name}{suffix}" in taken:
            suffix += 1
        copy = onnx.TensorProto()
        copy.CopyFrom(initializer)
        copy.name = f"{initializer.name}{suffix}"
        self.model.add_initializer(copy)
        return copy


class IncQOperatorQuantizer(ONNXQuantizer):  # type: ignore[misc]
    """onnxruntime's QOperator (QLinear*) / QIntegerOps quantizer with inc's choices."""

    def __init__(self, model: onnx.ModelProto, spec: QuantizerSpec, *, static: bool = True) -> None:
        self.inc_spec = spec
        values = _common_kwargs(model, spec, static=static)
        values["mode"] = QuantizationMode.QLinearOps if static else QuantizationMode.IntegerOps
        values["static"] = static
        params = inspect.signature(ONNXQuantizer.__init__).parameters
        ONNXQuantizer.__init__(self, **_renamed(values, params))


def _renamed(values: dict[str, Any], params: Any) -> dict[str, Any]:
    """Keyword arguments for the installed constructor (older releases used other names)."""
    out = {}
    for name, value in values.items():
        if name in params:
            out[name] = value
            continue
        for old in _RENAMED.get(name, ()):
            if old in params:
                out[old] = value
    return out


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its subgraphs use (defined, read or described)."""
    names = {t.name for t in (*graph.input, *graph.output, *graph.value_info)}
    names.update(i.name for i in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                names |= tensor_names(sub)
    names.discard("")
    return names


def check_single_definitions(graph: onnx.GraphProto, where: str = "the quantized model") -> None:
    """Raise ``ModelError`` when two things define one tensor name (the checker lets an
    initializer and a node output share a name; onnxruntime then fails to load the model or,
    worse, reads the wrong one)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    clashes: list[str] = []
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in defined:
                clashes.append(f"{out!r} (output of {node.op_type} {node.name!r})")
            defined.add(out)
    if clashes:
        raise ModelError(
            f"{where} defines tensors twice: {', '.join(clashes[:5])}"
            + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
            + "; every tensor name must have one producer (an initializer, a graph input or one "
            "node output). This is a bug in inc or onnxruntime's quantizer: please report it "
            "with the model"
        )


def run(quantizer: Any) -> onnx.ModelProto:
    """Quantize and return the ModelProto (the parent keeps it in ``quantizer.model``)."""
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # the parent sorts only when it saves to a file
    model = quantizer.model.model
    check_single_definitions(model.graph)
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.checker.check_model(model)
    return model
