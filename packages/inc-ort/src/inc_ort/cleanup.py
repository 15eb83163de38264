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


def keep_float(model: onnx.ModelProto, names: set[str]) -> list[str]:
    """Make the fp32 ops ``names`` stay fp32 when onnxruntime loads ``model``.

    onnxruntime fuses ``DQ -> op -> Q`` into an int8 kernel whatever the plan says: a float Add
    between two int8 convs becomes QLinearAdd, a float GlobalAveragePool
    QLinearGlobalAveragePool, and a float Conv/Gemm behind a DQ gets its weight quantized by
    onnxruntime itself. A per-axis DQ with repeated numbers hides the pattern from some of its
    fusions but not all (its GlobalAveragePool fusion takes it and then fails at run time:
    "x_scale must be a scalar"), so every activation input of such an op that comes from a
    DequantizeLinear gets its own dequantization written as ``Cast -> Sub(zero point) ->
    Mul(scale)``: the same numbers, exactly, in ops no fusion looks for. In place; returns the
    ops changed.
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        if node.name not in names:
            continue
        fed = _fed_by_dq(node, producers, inits)
        for index, dq in fed:
            prefix = f"{node.name}_inc_float_input{index}"
            added = _float_dequantize(graph, dq, inits, prefix)
            at = list(graph.node).index(node)
            for offset, new in enumerate(added):
                graph.node.insert(at + offset, new)
            node.input[index] = added[-1].output[0]
        if fed:
            changed.append(node.name)
    if changed:
        _drop_unread_qdq(graph)
    return changed


def _drop_unread_qdq(graph: onnx.GraphProto) -> None:
    """Remove Q/DQ nodes whose output nothing reads any more (a DQ that fed only fp32 ops)."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        unread = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read
        ]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)


def _fed_by_dq(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
) -> list[tuple[int, onnx.NodeProto]]:
    """(input index, per-tensor DQ) for the activation inputs of ``node`` read from a DQ."""
    found = []
    for index, name in enumerate(node.input):
        dq = producers.get(name)
        if not name or name in inits or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] in inits:  # a constant (weight) DQ: no activation fusion starts there
            continue
        scale = inits.get(dq.input[1])
        if scale is None or onnx.numpy_helper.to_array(scale).size != 1:
            continue
        found.append((index, dq))
    return found


def _float_dequantize(
    graph: onnx.GraphProto, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto], prefix: str
) -> list[onnx.NodeProto]:
    """``dq`` as float ops: ``Cast(x) - zero_point`` (when there is one) ``* scale``."""
    scale = onnx.numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32).reshape(())
    nodes = [
        onnx.helper.make_node(
            "Cast",
            [dq.input[0]],
            [f"{prefix}_cast"],
            name=f"{prefix}_cast",
            to=onnx.TensorProto.FLOAT,
        )
    ]
    zero_point = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    if zero_point is not None:
        z = onnx.numpy_helper.to_array(zero_point).astype(np.float32).reshape(())
        graph.initializer.append(onnx.numpy_helper.from_array(z, f"{prefix}_zero_point"))
        nodes.append(
            onnx.helper.make_node(
                "Sub",
                [nodes[-1].output[0], f"{prefix}_zero_point"],
                [f"{prefix}_centered"],
                name=f"{prefix}_sub",
            )
        )
    graph.initializer.append(onnx.numpy_helper.from_array(scale, f"{prefix}_scale"))
    nodes.append(
        onnx.helper.make_node(
            "Mul",
            [nodes[-1].output[0], f"{prefix}_scale"],
            [f"{prefix}_value"],
            name=f"{prefix}_mul",
        )
    )
    return nodes
