"""cleanup.int8_gates: the hard-sigmoid gates converters write (paddle2onnx's hard_swish and
squeeze-excite hard_sigmoid, after canonicalisation HardSigmoid + Mul) run between int8 tensors
as onnxruntime's QLinearAdd + QLinearMul instead of fp32 ops between a DQ and a Q. Checked with
onnxruntime itself: the kernels it runs, and the numbers against the graph before the rewrite."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_ort import cleanup, kernels

PROVIDERS = ["CPUExecutionProvider"]


def _qdq_gate(
    alpha: float = 1 / 6,
    beta: float = 0.5,
    zero_type: int = TensorProto.UINT8,
    gate_of_pool: bool = False,
    after: str | None = None,
    float_product: bool = False,
) -> onnx.ModelProto:
    """A QDQ graph as onnxruntime's quantizer writes it around a HardSwish (or, with
    ``gate_of_pool``, a squeeze-excite gate of the pooled tensor): x -> Q -> DQ -> HardSigmoid,
    Mul(DQ, gate) -> [after] -> Q -> DQ -> y."""
    np_zero = np.uint8 if zero_type == TensorProto.UINT8 else np.int8
    x_zero = 128 if zero_type == TensorProto.UINT8 else 0
    inits = [
        numpy_helper.from_array(np.array(12.0 / 255, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(x_zero, np_zero), "x_zero"),
        numpy_helper.from_array(np.array(8.0 / 255, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(x_zero // 4, np_zero), "y_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="x_dq"),
    ]
    gate_in = "xd"
    if gate_of_pool:
        nodes += [
            helper.make_node("GlobalAveragePool", ["xd"], ["pool"], name="pool"),
            helper.make_node("QuantizeLinear", ["pool", "x_scale", "x_zero"], ["pq"], name="p_q"),
            helper.make_node("DequantizeLinear", ["pq", "x_scale", "x_zero"], ["pd"], name="p_dq"),
        ]
        gate_in = "pd"
    nodes += [
        helper.make_node("HardSigmoid", [gate_in], ["gate"], name="hsig", alpha=alpha, beta=beta),
        helper.make_node("Mul", ["xd", "gate"], ["prod"], name="mul"),
    ]
    product = "prod"
    if after is not None:
        nodes.append(
            helper.make_node(after, ["prod"], ["moved"], name="after", kernel_shape=[2, 2])
        )
        product = "moved"
    shape = [2, 8, 6, 6] if after is None else [2, 8, 3, 3]
    if float_product:
        outputs = [helper.make_tensor_value_info(product, TensorProto.FLOAT, shape)]
    else:
        nodes += [
            helper.make_node("QuantizeLinear", [product, "y_scale", "y_zero"], ["yq"], name="y_q"),
            helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"], name="y_dq"),
        ]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    graph = helper.make_graph(
        nodes, "qdq_gate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 6])],
        outputs, inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _x(seed: int = 0) -> np.ndarray:
    # spread over the hard-sigmoid's kinks at -3 and 3 and the x scale's range [-6, 6]
    return np.random.default_rng(seed).normal(0.0, 3.0, (2, 8, 6, 6)).astype(np.float32)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
    return np.asarray(session.run(None, feed)[0])


def _kernels(model: onnx.ModelProto) -> Counter[str]:
    optimized = kernels.optimized_graph(model, PROVIDERS)
    assert optimized is not None
    return Counter(n.op_type for n in optimized.graph.node)


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    changed = cleanup.int8_gates(copy)
    onnx.checker.check_model(copy)
    return copy, changed


@pytest.mark.parametrize(
    "alpha,beta,gate_of_pool",
    [(1 / 6, 0.5, False), (0.2, 0.5, True)],
    ids=["hard_swish", "squeeze_excite_gate"],
)
def test_gate_runs_as_qlinear_add_and_mul_within_one_output_step(alpha, beta, gate_of_pool):
    model = _qdq_gate(alpha, beta, gate_of_pool=gate_of_pool)
    before = _kernels(model)
    assert before["HardSigmoid"] == 1 and before["Mul"] == 1  # fp32 between DQ and Q
    out, changed = _rewritten(model)
    assert changed == ["hsig"]
    after = _kernels(out)
    assert after["HardSigmoid"] == 0 and after["Mul"] == 0, after
    assert after["QLinearAdd"] == 1 and after["QLinearMul"] == 1, after
    feed = {"x": _x()}
    ref, got = _run(model, feed), _run(out, feed)
    # the gate is rounded to 1/255 before the product is quantized: one output step at most
    assert float(np.abs(ref - got).max()) <= 8.0 / 255 * 1.001
    if not gate_of_pool:  # against the exact hard-swish of the int8 input
        xd = (np.clip(np.round(feed["x"] / (12.0 / 255)) + 128, 0, 255) - 128) * (12.0 / 255)
        exact = xd * np.clip(alpha * xd + beta, 0.0, 1.0)
        # half an output step of rounding (saturating above 255 - 32 steps) plus the gate's
        # rounding (half of 1/255) times |x| <= 6
        inside = exact < (255 - 32) * 8.0 / 255
        err = np.abs(got - exact)[inside]
        assert float(err.max()) <= 4.0 / 255 + 3.0 / 255 + 1e-5


def test_a_data_movement_op_before_the_q_gets_the_q_copied_in_front_of_it():
    model = _qdq_gate(after="MaxPool")
    out, changed = _rewritten(model)
    assert changed == ["hsig"]
    after = _kernels(out)
    assert after["HardSigmoid"] == 0 and after["QLinearMul"] == 1, after
    feed = {"x": _x(1)}
    assert float(np.abs(_run(model, feed) - _run(out, feed)).max()) <= 8.0 / 255 * 1.001


@pytest.mark.parametrize(
    "kwargs,why",
    [
        ({"float_product": True}, "the product is read in float"),
        ({"zero_type": TensorProto.INT8}, "int8 activations: onnxruntime fuses uint8 only on x86"),
        ({"beta": 0.0}, "no positive shift to quantize as a constant"),
    ],
)
def test_gates_onnxruntime_would_not_fuse_are_left_alone(kwargs, why):
    model = _qdq_gate(**kwargs)
    out, changed = _rewritten(model)
    assert changed == [], why
    assert out.SerializeToString() == model.SerializeToString(), why


def _paddle_block(opset: int) -> onnx.ModelProto:
    """paddle2onnx's PP-LCNet block: conv -> hard_swish written as x * Clip(x + 3, 0, 6) / 6
    (below opset 14) or HardSwish, depthwise 3x3 conv, hard_swish, 1x1 conv."""
    rng = np.random.default_rng(3)
    inits, nodes, prev = [], [], "x"
    for name, shape, group in (("pw", (16, 16, 1, 1), 1), ("dw", (16, 1, 3, 3), 16)):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name))
        pads = [shape[-1] // 2] * 4
        nodes.append(
            helper.make_node(
                "Conv", [prev, name], [f"{name}_out"], name=name, group=group, pads=pads
            )
        )
        out = f"{name}_act"
        if opset >= 14:
            nodes.append(helper.make_node("HardSwish", [f"{name}_out"], [out], name=f"{name}_hs"))
        else:
            nodes += [
                helper.make_node("Add", [f"{name}_out", "three"], [f"{name}_a"], name=f"{name}_add"),
                helper.make_node("Clip", [f"{name}_a", "zero", "six"], [f"{name}_c"], name=f"{name}_clip"),
                helper.make_node("Mul", [f"{name}_out", f"{name}_c"], [f"{name}_m"], name=f"{name}_mul"),
                helper.make_node("Div", [f"{name}_m", "six"], [out], name=f"{name}_div"),
            ]  # fmt: skip
        prev = out
    inits.append(
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32), "last")
    )
    nodes.append(helper.make_node("Conv", [prev, "last"], ["y"], name="last"))
    if opset < 14:
        inits += [
            numpy_helper.from_array(np.array(v, np.float32), k)
            for k, v in (("three", 3.0), ("zero", 0.0), ("six", 6.0))
        ]
    graph = helper.make_graph(
        nodes, "paddle_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 12, 12])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 15])
def test_inc_runs_a_paddle_block_int8_through_its_hard_swishes(opset):
    model = _paddle_block(opset)
    rng = np.random.default_rng(4)
    batches = [rng.normal(0, 1, (2, 16, 12, 12)).astype(np.float32) for _ in range(4)]
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(model, conf, calib_dataloader=batches)
    assert {"pw", "dw", "last"} <= set(q.plan.quantized_ops())
    ran = _kernels(q.model)
    assert ran["QLinearConv"] == 3 and ran["QLinearMul"] == 2, ran
    assert ran["HardSigmoid"] == 0 and ran["Mul"] == 0 and ran["DequantizeLinear"] <= 1, ran
    assert _rewritten(q.model)[1] == []  # nothing left to rewrite
    feed = {"x": batches[0]}
    ref, got = _run(model, feed), _run(q.model, feed)
    sqnr = 10 * np.log10(float(np.sum(ref**2)) / float(np.sum((ref - got) ** 2)))
    assert sqnr > 25.0, sqnr
    assert model.graph.node[0].op_type == "Conv"  # the user's model untouched
