"""From inc's plan and ranges to onnxruntime's vocabulary: which nodes, which scale and zero point.

Every number here comes from ``inc_core.scheme`` (convention "onnxrt").
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from inc_core import scheme
from inc_core.errors import DataError
from inc_core.space import OpQuant, QuantPlan, TensorRanges, TensorScheme

from . import graph
from ._runtime import onnx
from .quantizer import NP_TYPES, QUANT_TYPES, QuantizerSpec

CONVENTION = "onnxrt"

log = logging.getLogger(__name__)


@dataclass
class Nodes:
    """The model's listed ops split by what the plan (and the recipes) decided."""

    static: list[str]
    dynamic: list[str]
    excluded: list[str]  # float by plan or by a recipe


def weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The output-channel axis of a weighted op's weight (per-channel quantization)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1  # MatMul: (.., K, N)


def split_nodes(model: onnx.ModelProto, plan: QuantPlan) -> Nodes:
    recipes = plan.recipes
    recipe_float: set[str] = set()
    weighted = [n.name for n in graph.weighted_nodes(model)]
    if weighted and recipes.get("first_conv_or_matmul_quantization") is False:
        recipe_float.add(weighted[0])
    if weighted and recipes.get("last_conv_or_matmul_quantization") is False:
        recipe_float.add(weighted[-1])
    if recipes.get("pre_post_process_quantization") is False:
        recipe_float.update(graph.pre_post_nodes(model))
    static, dynamic, excluded = [], [], []
    for name, op in plan.ops.items():
        if not op.quantized or name in recipe_float:
            excluded.append(name)
        elif op.approach == "dynamic":
            dynamic.append(name)
        else:
            static.append(name)
    # pre/post-processing may name follow ops (Reshape, ...) that plan.ops does not list
    excluded.extend(sorted(recipe_float - set(plan.ops)))
    return Nodes(static, dynamic, excluded)


def activation_schemes(
    model: onnx.ModelProto, ops: Mapping[str, OpQuant]
) -> dict[str, TensorScheme]:
    """Tensor -> the activation scheme it is quantized with.

    A tensor takes the scheme of the first quantized op that consumes it (the spec's per-op
    activation rule is about the op's input), looking through data-movement ops; a tensor no
    quantized op consumes (a graph output) takes its producer's.
    """
    consumers = graph.consumers_of(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    consts = graph.constants(model)
    memo: dict[str, TensorScheme | None] = {}

    def downstream(tensor: str, depth: int = 0) -> TensorScheme | None:
        if tensor in memo:
            return memo[tensor]
        memo[tensor] = None
        found = None
        for node in consumers.get(tensor, []):
            op = ops.get(node.name)
            if op is not None and op.approach == "static" and op.activation is not None:
                found = op.activation
                break
            if node.op_type in graph.FOLLOW_OPS and depth < 32:
                found = downstream(node.output[0], depth + 1)
                if found is not None:
                    break
        memo[tensor] = found
        return found

    def upstream(tensor: str, depth: int = 0) -> TensorScheme | None:
        node = producers.get(tensor)
        if node is None:
            return None
        op = ops.get(node.name)
        if op is not None and op.approach == "static" and op.activation is not None:
            return op.activation
        if node.op_type in graph.FOLLOW_OPS and depth < 32 and node.input:
            return upstream(node.input[0], depth + 1)
        return None

    names = {t for n in model.graph.node for t in (*n.input, *n.output) if t and t not in consts}
    result = {}
    for tensor in names:
        chosen = downstream(tensor) or upstream(tensor)
        if chosen is not None:
            result[tensor] = chosen
    return result


def float_outputs(model: onnx.ModelProto, ops: Mapping[str, OpQuant]) -> set[str]:
    """Outputs of static ops that no quantized op reads (directly or through data movement).

    Quantizing them would add a Q/DQ round trip that only costs time and precision: the float
    consumer (a bias Add, a LayerNorm, a graph output) wants float, and onnxruntime fuses
    ``DQ -> MatMul/Gemm`` with a float output (MatMulIntegerToFloat, QGemm). Only those: a Conv
    becomes QLinearConv only with a Q on its output.
    """
    consumers = graph.consumers_of(model)

    def feeds_quantized(tensor: str, depth: int = 0) -> bool:
        for node in consumers.get(tensor, []):
            op = ops.get(node.name)
            if op is not None and op.approach == "static":
                return True
            if (
                node.op_type in graph.FOLLOW_OPS
                and depth < 32
                and feeds_quantized(node.output[0], depth + 1)
            ):
                return True
        return False

    static = {name for name, op in ops.items() if op.approach == "static"}
    return {
        o
        for n in model.graph.node
        if n.name in static and n.op_type in graph.FLOAT_OUTPUT_OPS
        for o in n.output
        if not feeds_quantized(o)
    }


def adjusted_ranges(model: onnx.ModelProto, ranges: TensorRanges) -> dict[str, tuple[float, float]]:
    """Per-tensor (min, max), with onnxruntime's own adjustments applied first.

    A Relu/Clip whose input feeds only it is folded into the Q of its input, so that input is
    quantized with the activation's output range; a Softmax output spans [0, 1].
    """
    # inc's own entries (bias-correction means, SmoothQuant scales) are "inc.<kind>:<tensor>";
    # tensor names may hold ":" themselves (tf2onnx writes "input:0")
    plain = {k: (float(v.min), float(v.max)) for k, v in ranges.items() if not k.startswith("inc.")}
    consumers = graph.consumers_of(model)
    for node in model.graph.node:
        if node.op_type in ("Relu", "Clip") and len(consumers.get(node.input[0], [])) == 1:
            if node.output[0] in plain and node.input[0] in plain:
                plain[node.input[0]] = plain[node.output[0]]
        elif node.op_type == "Softmax" and node.output[0] in plain:
            plain[node.output[0]] = (0.0, 1.0)
    return plain


def activation_override(rng: tuple[float, float], ts: TensorScheme) -> dict[str, Any]:
    params = scheme.compute_qparams(
        rng[0], rng[1], dtype=ts.dtype, scheme=ts.scheme, convention=CONVENTION
    )
    return {
        "scale": np.array(params.scale, dtype=np.float32),
        "zero_point": np.array(params.zero_point, dtype=NP_TYPES[ts.dtype]),
        "quant_type": QUANT_TYPES[ts.dtype],
    }


def weight_range(
    values: np.ndarray, granularity: str, axis: int, name: str = "weight"
) -> tuple[np.ndarray, np.ndarray]:
    """``scheme.tensor_range`` of a weight in its own float dtype, as float64.

    The core's function takes a float64 copy of the whole tensor (twice a float32 weight's
    size: 2 GiB more for a 1 GiB weight of a >2 GB model); min and max pick values, so taking
    them in float32 and widening the results gives the same numbers. A NaN or inf anywhere
    shows in the min or the max, which stands for the core's finiteness check.
    """
    if values.size == 0:
        return scheme.tensor_range(values, granularity, axis)  # the core's error
    if granularity == "per_channel":
        others = tuple(i for i in range(values.ndim) if i != axis % values.ndim)
        lo, hi = values.min(axis=others), values.max(axis=others)
    else:
        lo, hi = values.min(), values.max()
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        bad = "NaN" if np.isnan(lo).any() or np.isnan(hi).any() else "inf"
        raise DataError(
            f"{name} contains {bad}; quantization ranges must be finite (keep the op in fp32 "
            "or fix the weight)"
        )
    return lo, hi


def weight_override(
    values: np.ndarray, ts: TensorScheme, axis: int, reduce_range: bool, name: str = "weight"
) -> list[dict[str, Any]]:
    if values.dtype.kind != "f":  # the core's float64 path for anything else
        lo, hi = scheme.tensor_range(values, ts.granularity, axis)
    else:
        lo, hi = weight_range(values, ts.granularity, axis, name)
    params = scheme.compute_qparams(
        lo,
        hi,
        dtype=ts.dtype,
        scheme=ts.scheme,
        convention=CONVENTION,
        reduce_range=reduce_range,
        axis=axis if ts.granularity == "per_channel" else None,
    )
    qtype = QUANT_TYPES[ts.dtype]
    if ts.granularity == "per_tensor":
        return [
            {
                "scale": np.array(params.scale, dtype=np.float32),
                "zero_point": np.array(params.zero_point, dtype=NP_TYPES[ts.dtype]),
                "quant_type": qtype,
            }
        ]
    rows = []
    for i, (s, z) in enumerate(zip(params.scale, params.zero_point, strict=True)):
        row: dict[str, Any] = {
            "scale": np.array(s, dtype=np.float32),
            "zero_point": np.array(z, dtype=NP_TYPES[ts.dtype]),
        }
        if i == 0:
            row.update(axis=axis, quant_type=qtype)
        rows.append(row)
    return rows


def weight_overrides(
    model: onnx.ModelProto,
    ops: Mapping[str, OpQuant],
    names: list[str],
    reduce_range: bool,
    uniform_granularity: str | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """Overrides for the weights of ``names``; and whether any of them is per channel."""
    consts = graph.constants(model)
    by_name = {n.name: n for n in model.graph.node}
    out: dict[str, list[dict[str, Any]]] = {}
    per_channel = False
    if graph.opset(model) < 13:  # DequantizeLinear has no axis before opset 13
        uniform_granularity = "per_tensor"
    for name in names:
        node, op = by_name.get(name), ops[name]
        if node is None or op.weight is None:
            continue
        weight = graph.weight_input(node, consts)
        init = graph.initializer(model, weight) if weight else None
        if not weight or init is None or weight in out:
            continue
        values = onnx.numpy_helper.to_array(init)
        ts = op.weight
        if uniform_granularity and ts.granularity != uniform_granularity:
            ts = TensorScheme(ts.dtype, ts.scheme, uniform_granularity, ts.algorithm)
        if values.ndim < 2 and ts.granularity == "per_channel":
            ts = TensorScheme(ts.dtype, ts.scheme, "per_tensor", ts.algorithm)
        axis = weight_axis(node, values.ndim)
        out[weight] = weight_override(values, ts, axis, reduce_range, f"weight {weight!r}")
        del values  # one weight's copy at a time
        per_channel = per_channel or ts.granularity == "per_channel"
    return out, per_channel


def static_spec(
    model: onnx.ModelProto, plan: QuantPlan, ranges: TensorRanges, nodes: Nodes, qoperator: bool
) -> QuantizerSpec:
    ops = plan.ops
    static_ops = {n: ops[n] for n in nodes.static}
    schemes = activation_schemes(model, static_ops)
    if qoperator:
        schemes = _one_activation_dtype(schemes, static_ops)
    keep_float = set() if qoperator else float_outputs(model, static_ops)
    schemes = {t: s for t, s in schemes.items() if t not in keep_float}
    plain = adjusted_ranges(model, ranges)
    overrides: dict[str, list[dict[str, Any]]] = {}
    used_ranges: dict[str, tuple[float, float]] = {}
    for tensor, ts in schemes.items():
        if tensor in plain:
            overrides[tensor] = [activation_override(plain[tensor], ts)]
            used_ranges[tensor] = plain[tensor]
    granularity = None
    if qoperator:  # QLinear* ops take one weight granularity for the whole graph
        granularity = (
            Counter(
                op.weight.granularity for op in (ops[n] for n in nodes.static) if op.weight
            ).most_common(1)[0][0]
            if any(ops[n].weight for n in nodes.static)
            else None
        )
    weights, per_channel = weight_overrides(
        model, ops, nodes.static, bool(plan.reduce_range), granularity
    )
    overrides.update(weights)
    dtypes = Counter(op.activation.dtype for op in static_ops.values() if op.activation)
    static_set = set(nodes.static)
    listed_types = set(graph.STATIC_OPS)
    # Every listed-type node that is not static stays float, including unlisted bias Adds.
    exclude = [
        n.name for n in model.graph.node if n.op_type in listed_types and n.name not in static_set
    ]
    exclude += [n for n in nodes.excluded if n not in exclude]
    # an op reading a tensor that has no range (it held inf on the calibration data) stays float
    exclude += [
        n.name
        for n in model.graph.node
        if n.name in static_set and any(i in schemes and i not in overrides for i in n.input)
    ]
    # a data-movement op between float ops (its input has no quantization parameters) stays float
    exclude += [
        n.name
        for n in model.graph.node
        if n.op_type in graph.FOLLOW_OPS and n.input and n.input[0] not in overrides
    ]
    symmetric = any(op.activation and op.activation.scheme == "sym" for op in static_ops.values())
    types = sorted({plan.op_types[n] for n in nodes.static} | set(graph.FOLLOW_OPS))
    return QuantizerSpec(
        nodes_to_quantize=[],
        nodes_to_exclude=exclude,
        op_types_to_quantize=types,
        activation_type=dtypes.most_common(1)[0][0] if dtypes else "uint8",
        weight_type="int8",
        per_channel=per_channel,
        reduce_range=bool(plan.reduce_range),
        ranges=used_ranges,
        overrides=overrides,
        extra_options={"ActivationSymmetric": symmetric},
        float_tensors=keep_float,
    )


def _one_activation_dtype(
    schemes: dict[str, TensorScheme], static_ops: Mapping[str, OpQuant]
) -> dict[str, TensorScheme]:
    """Every activation in the plan's most common dtype (QOperator only).

    A QLinear* kernel takes one type for its activation inputs and output: a QLinearAdd between a
    uint8 and an int8 tensor does not load ("Type parameter (T) bound to different types"), so a
    rule or a tuning candidate that mixes int8 and uint8 ops is run with one dtype, and a warning
    names the ops that changed (QDQ takes the mix: onnxruntime fuses only where types agree).
    """
    dtypes = Counter(op.activation.dtype for op in static_ops.values() if op.activation)
    if len(dtypes) < 2:
        return schemes
    common = dtypes.most_common(1)[0][0]
    changed = sorted(
        name for name, op in static_ops.items() if op.activation and op.activation.dtype != common
    )
    log.warning(
        "quant_format='QOperator' runs one activation dtype: ops %s asked for another than %r "
        "and run %r (use quant_format='QDQ' to mix int8 and uint8 activations)",
        ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else ""),
        common,
        common,
    )
    return {
        tensor: ts
        if ts.dtype == common
        else TensorScheme(common, ts.scheme, ts.granularity, ts.algorithm)
        for tensor, ts in schemes.items()
    }


def dynamic_spec(model: onnx.ModelProto, plan: QuantPlan, nodes: Nodes) -> QuantizerSpec:
    weights, per_channel = weight_overrides(model, plan.ops, nodes.dynamic, bool(plan.reduce_range))
    return QuantizerSpec(
        nodes_to_quantize=list(nodes.dynamic),
        nodes_to_exclude=[],
        op_types_to_quantize=["MatMul"],  # Gemm was rewritten to MatMul + Add
        activation_type="uint8",
        weight_type="int8",
        per_channel=per_channel,
        reduce_range=bool(plan.reduce_range),
        overrides=weights,
        extra_options={"MatMulConstBOnly": True},
    )
