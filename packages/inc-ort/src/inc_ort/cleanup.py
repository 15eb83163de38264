"""Clean-ups after onnxruntime's quantizer: drop Q/DQ pairs that only cost time."""

from __future__ import annotations

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
