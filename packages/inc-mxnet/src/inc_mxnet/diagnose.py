"""Per-op outputs and kernels of MXNet graphs, for the core's guards.

An op (a Gluon Convolution or FullyConnected, named as ``ops()`` names it) runs inside a oneDNN
fused node (``_sg_mkldnn_conv``: conv + batch norm + activation + sum) both in fp32 and in int8,
so an op's output is its fused node's first output: fp32 from the fused float graph, int8
through MXNet's own ``dequantize`` with the node's min/max outputs. Comparing the two gives
the error of the op as the runtime runs it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import mxnet as mx
import numpy as np

from .graph import FUSION, OP_TYPES, op_name, output_dtypes

_QUANTIZED = ("int8", "uint8")


def op_nodes(symbol: mx.sym.Symbol) -> dict[str, int]:
    """Op name -> index of the top-level node computing it (itself, or the fused node whose
    subgraph holds it)."""
    found: dict[str, int] = {}
    for index, node in enumerate(json.loads(symbol.tojson())["nodes"]):
        if node["op"] in OP_TYPES:
            found[op_name(node["name"])] = index
        for sub in node.get("subgraphs", []):
            for inner in sub["nodes"]:
                if inner["op"] in OP_TYPES:
                    found[op_name(inner["name"])] = index
    return found


def is_quantized(symbol: mx.sym.Symbol) -> bool:
    return any(
        n["op"].startswith(("_contrib_quantize", "_contrib_quantized"))
        or n.get("attrs", {}).get("quantized", "").lower() == "true"
        for n in json.loads(symbol.tojson())["nodes"]
    )


def fused_view(symbol: mx.sym.Symbol) -> mx.sym.Symbol:
    """The graph as oneDNN runs it: float graphs fused (conv + activation is one op)."""
    return symbol if is_quantized(symbol) else symbol.get_backend_symbol(FUSION)


def runs_as(symbol: mx.sym.Symbol) -> dict[str, str]:
    """Op name -> its node's operator and data type, e.g. ``"_sg_mkldnn_conv (int8)"``."""
    nodes = json.loads(symbol.tojson())["nodes"]
    found = {}
    for name, index in op_nodes(symbol).items():
        node = nodes[index]
        quantized = node.get("attrs", {}).get("quantized", "").lower() == "true"
        found[name] = f"{node['op']} ({'int8' if quantized else 'fp32'})"
    return found


def _heads(data: dict[str, Any], heads: list[list[int]]) -> mx.sym.Symbol:
    graph = {k: v for k, v in data.items() if k != "node_row_ptr"}
    graph["heads"] = heads
    return mx.sym.load_json(json.dumps(graph))


def op_outputs(
    symbol: mx.sym.Symbol,
    data_names: Sequence[str],
    arg_params: Mapping[str, mx.nd.NDArray],
    aux_params: Mapping[str, mx.nd.NDArray],
    inputs: Mapping[str, mx.nd.NDArray],
    ops: Sequence[str],
) -> dict[str, np.ndarray]:
    """The named ops' outputs on one batch, float32 (int8/uint8 outputs dequantized)."""
    data = json.loads(symbol.tojson())
    where = op_nodes(symbol)
    dtypes = output_dtypes(symbol, data_names)
    names = [n for n in ops if n in where]
    if not names:
        return {}
    # one graph holding every wanted node output (separately loaded graphs would each bring
    # their own copies of the variables)
    heads: list[list[int]] = []
    quantized: list[bool] = []
    for name in names:
        index = where[name]
        quantized.append(dtypes.get(data["nodes"][index]["name"]) in _QUANTIZED)
        heads.extend([index, k, 0] for k in range(3 if quantized[-1] else 1))
    graph = _heads(data, heads)
    outputs = []
    position = 0
    for is_int in quantized:
        if (
            is_int
        ):  # MXNet's own dequantize reads the node's (value, min, max) as the kernel wrote them
            value, lo, hi = (graph[position + k] for k in range(3))
            outputs.append(mx.sym.contrib.dequantize(value, lo, hi, out_type="float32"))
            position += 3
        else:
            outputs.append(graph[position])
            position += 1
    group = mx.sym.Group(outputs)
    wanted = set(group.list_arguments())
    args = {k: v for k, v in arg_params.items() if k in wanted}
    args.update({k: v for k, v in inputs.items() if k in wanted})
    auxs = {k: v for k, v in aux_params.items() if k in set(group.list_auxiliary_states())}
    executor = group.bind(mx.cpu(), args, aux_states=auxs, grad_req="null")
    values = executor.forward(is_train=False)
    return {n: v.asnumpy().astype(np.float32) for n, v in zip(names, values, strict=True)}
