"""Clean-ups after onnxruntime's quantizer: drop Q/DQ pairs that only cost time."""

from __future__ import annotations

import numpy as np

from . import graph as graphs
from ._runtime import onnx


def strip_output_qdq(model: onnx.ModelProto) -> int:
    """Remove ``X -> QuantizeLinear -> DequantizeLinear -> graph output`` round trips.

    The float graph output gains nothing from being rounded to int8 first; without the pair
    onnxruntime fuses the producer (DQ-Gemm into QGemm, DQ-MatMul into MatMulIntegerToFloat,
    both with a float output). Only for those producers: a Conv needs its Q to run as
    QLinearConv. In place; returns how many pairs were removed.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    removed = []
    for name in outputs:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or consumers.get(q.output[0], 0) != 1:
            continue
        source = producers.get(q.input[0])
        if (
            source is None
            or source.op_type not in graphs.FLOAT_OUTPUT_OPS
            or consumers.get(q.input[0], 0) != 1
            or q.input[0] in outputs
        ):
            continue
        index = list(source.output).index(q.input[0])
        source.output[index] = name
        removed += [q, dq]
    for node in removed:
        graph.node.remove(node)
    return len(removed) // 2


#: ops whose float weight onnxruntime quantizes itself (per tensor) when their input comes from a
#: per-tensor DequantizeLinear (its WeightBiasQuantization transformer), turning an op a rule kept
#: in fp32 back into QLinearConv/QGemm
_SELF_QUANTIZED = ("Conv", "ConvTranspose", "Gemm")


def keep_float(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Make the fp32 ops ``names`` stay fp32 when onnxruntime loads ``model``.

    Each such op fed by a DequantizeLinear gets a DequantizeLinear of its own whose scale and zero
    point are the same numbers repeated per input channel: the same values, but not the per-tensor
    DQ that onnxruntime's weight quantization looks for. In place; returns the ops changed.
    """
    graph = model.graph
    if graphs.opset(model) < 13:  # DequantizeLinear takes an axis from opset 13 on
        return []
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        if node.name not in names or node.op_type not in _SELF_QUANTIZED or len(node.input) < 2:
            continue
        dq = producers.get(node.input[0])
        weight = inits.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or weight is None:
            continue
        scale, zero_point = (
            inits.get(dq.input[1]),
            inits.get(dq.input[2]) if len(dq.input) > 2 else None,
        )
        if scale is None or onnx.numpy_helper.to_array(scale).size != 1:
            continue
        channels = _input_channels(node, list(weight.dims))
        if channels is None:
            continue
        prefix = f"{node.name}_inc_float_input"
        s = onnx.numpy_helper.to_array(scale).reshape(-1)
        graph.initializer.append(
            onnx.numpy_helper.from_array(np.repeat(s, channels), f"{prefix}_scale")
        )
        inputs = [dq.input[0], f"{prefix}_scale"]
        if zero_point is not None:
            z = onnx.numpy_helper.to_array(zero_point).reshape(-1)
            graph.initializer.append(
                onnx.numpy_helper.from_array(np.repeat(z, channels), f"{prefix}_zero_point")
            )
            inputs.append(f"{prefix}_zero_point")
        own = onnx.helper.make_node(
            "DequantizeLinear", inputs, [f"{prefix}_value"], name=f"{prefix}_dq", axis=1
        )
        graph.node.insert(list(graph.node).index(node), own)
        node.input[0] = own.output[0]
        changed.append(node.name)
    return changed


def _input_channels(node: onnx.NodeProto, dims: list[int]) -> int | None:
    if node.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return dims[1] if trans_b else dims[0]
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return dims[1] * group
    return dims[0]  # ConvTranspose: (C_in, C_out / group, ...)
