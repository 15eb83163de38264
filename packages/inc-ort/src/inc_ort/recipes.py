"""The spec's ONNX Runtime recipes that change numbers: SmoothQuant, bias and weight correction,
and the QDQ-layout recipes passed to onnxruntime's quantizer as its extra_options.

``graph_optimization_level`` and ``gemm_to_matmul`` are graph rewrites applied in
``backend.prepare``; ``first/last_conv_or_matmul_quantization`` and
``pre_post_process_quantization`` choose nodes in ``planner.split_nodes``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inc_core import scheme
from inc_core.space import QuantPlan, TensorRanges

from . import graph, smooth_quant
from ._runtime import onnx
from .calibrate import MEAN_PREFIX
from .planner import CONVENTION, weight_axis


def qdq_options(plan: QuantPlan, config_backend: str) -> dict[str, Any]:
    """onnxruntime extra_options for the QDQ recipes and the TensorRT requirements."""
    r = plan.recipes
    options: dict[str, Any] = {}
    if r.get("add_qdq_pair_to_weight"):
        options["AddQDQPairToWeight"] = True
    if r.get("dedicated_qdq_pair"):
        options["DedicatedQDQPair"] = True
    if r.get("optypes_to_exclude_output_quant"):
        options["OpTypesToExcludeOutputQuantization"] = list(r["optypes_to_exclude_output_quant"])
    if config_backend == "onnxrt_trt_ep":
        # TensorRT reads explicit Q/DQ pairs on weights, one pair per consumer, no Q after
        # weighted ops, symmetric int8 activations.
        options.update(
            AddQDQPairToWeight=True,
            DedicatedQDQPair=True,
            OpTypesToExcludeOutputQuantization=["Conv", "Gemm", "Add", "MatMul"],
            QDQOpTypePerChannelSupportToAxis={"MatMul": 1},
            ActivationSymmetric=True,
        )
    return options


def smooth_quant_scales(model: onnx.ModelProto, data: list[Any], plan: QuantPlan) -> TensorRanges:
    return smooth_quant.compute(model, data, dict(plan.recipes.get("smooth_quant_args", {})))


def apply_smooth_quant(
    model: onnx.ModelProto, ranges: TensorRanges, plan: QuantPlan
) -> onnx.ModelProto:
    folding = bool(dict(plan.recipes.get("smooth_quant_args", {})).get("folding", True))
    return smooth_quant.apply(model, ranges, folding=folding)


def _corrected_nodes(model: onnx.ModelProto, plan: QuantPlan) -> list[onnx.NodeProto]:
    """Static-quantized Conv/Gemm/MatMul nodes with a constant weight."""
    static = {n for n, op in plan.ops.items() if op.approach == "static" and op.weight is not None}
    return [n for n in graph.weighted_nodes(model) if n.name in static]


def bias_correction_inputs(model: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """Activations whose per-channel means fast_bias_correction needs."""
    if not plan.recipes.get("fast_bias_correction"):
        return []
    return list(
        dict.fromkeys(
            n.input[0] for n in _corrected_nodes(model, plan) if n.op_type != "ConvTranspose"
        )
    )


def _set(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    init = graph.initializer(model, name)
    assert init is not None
    init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), name))


def _dequantized(w: np.ndarray, node: onnx.NodeProto, plan: QuantPlan) -> np.ndarray:
    ts = plan.ops[node.name].weight
    assert ts is not None
    params = scheme.weight_qparams(
        w,
        dtype=ts.dtype,
        scheme=ts.scheme,
        granularity=ts.granularity,
        axis=weight_axis(node, w.ndim),
        convention=CONVENTION,
        reduce_range=bool(plan.reduce_range),
    )
    return scheme.fake_quantize(w, params)


def correct_weights(model: onnx.ModelProto, plan: QuantPlan, ranges: TensorRanges) -> None:
    """weight_correction then fast_bias_correction, in place on inc's working copy.

    * weight_correction scales each output channel so that its int8 weights dequantize with the
      fp32 channel's standard deviation (rounding shrinks or stretches it). The integers do not
      change; the scales absorb the correction.
    * fast_bias_correction adds to each output channel's bias the mean error the int8 weights
      make on the calibration data: ``E[x] . (W - dequant(quant(W)))``.
    """
    weight_fix = bool(plan.recipes.get("weight_correction"))
    bias_fix = bool(plan.recipes.get("fast_bias_correction"))
    if not (weight_fix or bias_fix):
        return
    for node in _corrected_nodes(model, plan):
        w = onnx.numpy_helper.to_array(graph.initializer(model, node.input[1])).astype(np.float64)
        axis = weight_axis(node, w.ndim)
        if weight_fix:
            deq = _dequantized(w, node, plan)
            other = tuple(i for i in range(w.ndim) if i != axis)
            ratio = np.std(w, axis=other) / np.maximum(np.std(deq, axis=other), 1e-12)
            shape = [1] * w.ndim
            shape[axis] = -1
            w = w * np.where(np.isfinite(ratio) & (ratio > 0), ratio, 1.0).reshape(shape)
            _set(model, node.input[1], w)
        bias_name = _bias_of(model, node)
        if bias_fix and bias_name is not None:
            mean = ranges.get(MEAN_PREFIX + node.input[0])
            bias = graph.initializer(model, bias_name)
            if mean is None or bias is None:
                continue
            err = w - _dequantized(w, node, plan)
            m = np.asarray(mean.min, dtype=np.float64)
            if node.op_type == "Conv":
                delta = err.reshape(err.shape[0], err.shape[1], -1).sum(-1) @ m
            else:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                delta = err @ m if trans_b else m @ err
            _set(model, bias_name, onnx.numpy_helper.to_array(bias).astype(np.float64) + delta)


def _bias_of(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """The bias initializer of a Conv/Gemm (third input) or of the Add right after a MatMul."""
    inits = {i.name: i for i in model.graph.initializer}
    if node.op_type in ("Conv", "Gemm"):
        has = len(node.input) > 2 and node.input[2] in inits
        return node.input[2] if has else None
    if node.op_type != "MatMul":
        return None
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    other: list[str] = [i for i in readers[0].input if i != node.output[0]]
    if len(other) == 1 and other[0] in inits and len(inits[other[0]].dims) == 1:
        return other[0]
    return None
