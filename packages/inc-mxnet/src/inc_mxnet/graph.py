"""Symbol-level steps of MXNet's oneDNN int8 path, with inc deciding the ranges.

MXNet's own flow (``quantize_net_v2``) is: fuse (``MKLDNN_QUANTIZE``), insert quantize nodes
(``_quantize_symbol``), calibrate with its collectors, set the table, fuse again. We keep the
graph passes and replace the calibration: ranges come from ``inc_core.calibration`` observers and
are written into the graph's ``min_calib_range``/``max_calib_range`` attributes at full float
precision (MXNet's own setter rounds them to six decimals).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization as mxq

from inc_core.space import OpInfo

from .model import FloatGraph

FUSION = "MKLDNN_QUANTIZE"
#: native op types inc plans for; the fused oneDNN nodes that carry them
OP_TYPES: tuple[str, ...] = ("Convolution", "FullyConnected")
FUSED_TYPES: dict[str, str] = {
    "_sg_mkldnn_conv": "Convolution",
    "_sg_mkldnn_fully_connected": "FullyConnected",
}
#: MXNet decides which non-planned ops (pooling, flatten, concat, ...) run in int8 between
#: quantized ones ("smart"); "full" would also quantize ops inc never calibrates for.
QUANTIZE_MODE = "smart"


def op_name(node_name: str) -> str:
    """What users write in op_name_dict: the Gluon layer name (node name without ``_fwd``)."""
    return node_name[: -len("_fwd")] if node_name.endswith("_fwd") else node_name


def nodes(symbol: mx.sym.Symbol) -> list[dict[str, Any]]:
    return list(json.loads(symbol.tojson())["nodes"])


def list_ops(graph: FloatGraph) -> list[OpInfo]:
    """Convolution and FullyConnected nodes of the float graph, in graph order."""
    return [OpInfo(op_name(n["name"]), n["op"]) for n in nodes(graph.symbol) if n["op"] in OP_TYPES]


@dataclass(frozen=True)
class FusedGraph:
    """The float graph after oneDNN fusion (conv+bn+relu, fc+relu), with the op mapping."""

    symbol: mx.sym.Symbol
    #: user op name -> the fused node that computes it
    fused_node: Mapping[str, str]


def fuse(graph: FloatGraph) -> FusedGraph:
    symbol = graph.symbol.get_backend_symbol(FUSION)
    fused_node: dict[str, str] = {}
    for node in nodes(symbol):
        if node["op"] in OP_TYPES:
            fused_node[op_name(node["name"])] = node["name"]
        for sub in node.get("subgraphs", []):
            for inner in sub["nodes"]:
                if inner["op"] in OP_TYPES:
                    fused_node[op_name(inner["name"])] = node["name"]
    return FusedGraph(symbol, fused_node)


def quantize_symbol(
    graph: FloatGraph, fused: FusedGraph, float_ops: list[str]
) -> tuple[mx.sym.Symbol, list[str]]:
    """The int8 graph with the ops in ``float_ops`` left in fp32, and the tensors to calibrate."""
    excluded = sorted({fused.fused_node[name] for name in float_ops if name in fused.fused_node})
    qsym, calib_tensors = mxq._quantize_symbol(
        fused.symbol,
        mx.cpu(),
        excluded_symbols=excluded,
        offline_params=list(graph.arg_params),
        quantized_dtype="auto",
        quantize_mode=QUANTIZE_MODE,
    )
    return qsym, calib_tensors


def consumers(fused: FusedGraph) -> dict[str, list[str]]:
    """Tensor name (as MXNet's calibration names it) -> user ops downstream of it.

    A tensor that reaches a planned op only through pooling or flatten counts as that op's
    input: the op's activation algorithm decides its range.
    """
    graph_nodes = nodes(fused.symbol)
    op_of_node = {node: op for op, node in fused.fused_node.items()}
    tensor_of: list[str] = []
    for node in graph_nodes:
        tensor_of.append(node["name"] if node["op"] == "null" else f"{node['name']}_output")
    downstream: dict[int, list[int]] = {}
    for index, node in enumerate(graph_nodes):
        for source, *_ in node.get("inputs", []):
            downstream.setdefault(source, []).append(index)

    def reach(index: int, seen: set[int]) -> list[str]:
        found: list[str] = []
        for nxt in downstream.get(index, []):
            if nxt in seen:
                continue
            seen.add(nxt)
            name = graph_nodes[nxt]["name"]
            if name in op_of_node:
                found.append(op_of_node[name])
            else:
                found.extend(reach(nxt, seen))
        return found

    return {tensor_of[i]: reach(i, set()) for i in range(len(graph_nodes))}


# MXNet's int8 kernels map a calibrated range [min, max] onto 127.5 (int8) or 255.5 (uint8)
# steps (kInt8Range / kUint8Range in src/operator/quantization/quantization_utils.h), where
# inc_core.scheme's MXNet convention, like the spec, divides by 127 and 255. Writing the range
# widened by 127.5/127 (255.5/255) makes the kernels quantize with the convention's scale exactly.
KERNEL_LEVELS: dict[str, float] = {"int8": 127.5, "uint8": 255.5}
CONVENTION_LEVELS: dict[str, float] = {"int8": 127.0, "uint8": 255.0}


def output_dtypes(symbol: mx.sym.Symbol, data_names: Sequence[str]) -> dict[str, str]:
    """Node name -> dtype of its first output, as MXNet's type inference decides it.

    This is where the kernels' choice shows: a fused ReLU emits uint8, a quantized batch norm
    int8, a quantize node its ``out_type`` (``auto``: uint8 for a non-negative range).
    """
    internals = symbol.get_internals()
    _, types, _ = internals.infer_type(**{n: "float32" for n in data_names})
    found: dict[str, str] = {}
    for output, dtype in zip(internals.list_outputs(), types, strict=True):
        found.setdefault(output.rsplit("_output", 1)[0], np.dtype(dtype).name)
    return found


def _widening(dtype: str) -> float:
    return KERNEL_LEVELS[dtype] / CONVENTION_LEVELS[dtype]


def _calib_key(node: Mapping[str, Any], graph_nodes: list[dict[str, Any]]) -> str:
    """The calibration tensor whose range a quantized node's calib attributes hold."""
    name = node["name"]
    if node["op"] == "_contrib_quantize_v2":
        source = graph_nodes[node["inputs"][0][0]]
        return source["name"] if source["op"] == "null" else f"{source['name']}_output"
    for prefix in ("requantize_", "quantized_"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return f"{name}_output"


def set_calibration(
    qsym: mx.sym.Symbol,
    ranges: Mapping[str, tuple[float, float]],
    entry_dtypes: Mapping[str, str],
    data_names: Sequence[str],
) -> mx.sym.Symbol:
    """``qsym`` with ``ranges`` (tensor -> calibrated (min, max)) set, fused for oneDNN.

    ``entry_dtypes`` sets ``out_type`` of the quantize nodes (where fp32 tensors enter the
    int8 region) by tensor name; inside the region the kernels choose (``output_dtypes``).
    """
    calibrated = mxq._calibrate_quantized_sym(qsym, dict(ranges)).get_backend_symbol(FUSION)
    data = json.loads(calibrated.tojson())
    written = []
    for node in data["nodes"]:
        attrs = node.get("attrs", {})
        key = _calib_key(node, data["nodes"]) if "min_calib_range" in attrs else None
        if key is None or key not in ranges:
            continue
        if node["op"] == "_contrib_quantize_v2" and key in entry_dtypes:
            attrs["out_type"] = entry_dtypes[key]
        # full float precision: MXNet's own setter writes six decimals
        attrs["min_calib_range"], attrs["max_calib_range"] = (repr(float(v)) for v in ranges[key])
        written.append(node)
    dtypes = output_dtypes(mx.sym.load_json(json.dumps(data)), data_names)
    for node in written:
        factor = _widening(dtypes[node["name"]])
        attrs = node["attrs"]
        attrs["min_calib_range"] = repr(float(attrs["min_calib_range"]) * factor)
        attrs["max_calib_range"] = repr(float(attrs["max_calib_range"]) * factor)
    return mx.sym.load_json(json.dumps(data))


@dataclass(frozen=True)
class CalibEntry:
    """One calibrated tensor of a quantized graph, read back from its node's attributes."""

    #: the calibrated range inc handed over (the attributes without the kernel widening)
    min: float
    max: float
    #: the integer type the tensor is held in
    dtype: str
    node: str
    #: the raw ``min_calib_range`` / ``max_calib_range`` attribute values
    attr_min: float
    attr_max: float


def read_calibration(
    symbol: mx.sym.Symbol, data_names: Sequence[str] = ("data",)
) -> dict[str, CalibEntry]:
    """Tensor -> its calibrated range and dtype, as written in a quantized graph."""
    graph_nodes = nodes(symbol)
    dtypes = output_dtypes(symbol, data_names)
    table = {}
    for node in graph_nodes:
        attrs = node.get("attrs", {})
        if "min_calib_range" in attrs:
            lo, hi = float(attrs["min_calib_range"]), float(attrs["max_calib_range"])
            dtype = dtypes[node["name"]]
            factor = _widening(dtype)
            table[_calib_key(node, graph_nodes)] = CalibEntry(
                lo / factor, hi / factor, dtype, node["name"], lo, hi
            )
    return table


def quantize_params(qsym: mx.sym.Symbol, graph: FloatGraph) -> dict[str, mx.nd.NDArray]:
    """int8 weights for the quantized FullyConnected nodes (oneDNN convs quantize theirs)."""
    params: dict[str, mx.nd.NDArray] = mxq._quantize_params(qsym, graph.arg_params, {})
    return params
