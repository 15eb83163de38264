"""cleanup.keep_float on fp32 islands: a weight an int8 op shares with fp32 ops (tf2onnx's conv1d
stacks read one weight from 8-16 Convs) is quantized once; the fp32 readers get its dequantized
values as a constant, so onnxruntime pre-packs them (NCHWc Conv) instead of convolving with a
weight computed at run time. Checked with onnxruntime: what it runs and the numbers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_ort import cleanup, kernels

PROVIDERS = ["CPUExecutionProvider"]


def _shared_weight_qdq(per_channel: bool = True) -> onnx.ModelProto:
    """As onnxruntime's quantizer writes it: an int8 Conv ("int8") and a float Conv ("float",
    its activation not dequantized) read one quantized weight through one DequantizeLinear."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    if per_channel:
        scale = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
        q = np.round(w / scale[:, None, None, None]).astype(np.int8)
        zero = np.zeros(8, np.int8)
    else:
        scale = np.array(np.abs(w).max() / 127, np.float32)
        q = np.round(w / scale).astype(np.int8)
        zero = np.array(0, np.int8)
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(scale, "w_scale"),
        numpy_helper.from_array(zero, "w_zero"),
        numpy_helper.from_array(np.array(0.03, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="w_dq",
                         axis=0),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_dq"),
        helper.make_node("Conv", ["xd", "w"], ["a"], name="int8", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"], name="a_q"),
        helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["y_int8"], name="a_dq"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["y_float"], name="float", pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "shared_weight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 10, 10])],
        [helper.make_tensor_value_info("y_int8", TensorProto.FLOAT, ["N", 8, 10, 10]),
         helper.make_tensor_value_info("y_float", TensorProto.FLOAT, ["N", 8, 10, 10])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
    return [np.asarray(o) for o in session.run(None, {"x": x})]


def _float_conv_weight_is_constant(model: onnx.ModelProto) -> bool:
    """Whether the float Conv onnxruntime runs reads its weight from an initializer."""
    optimized = kernels.optimized_graph(model, PROVIDERS)
    assert optimized is not None
    produced = {o for n in optimized.graph.node for o in n.output}
    # the only float Conv of the graph (named "float", or after its output once NCHWc)
    convs = [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv")]
    assert len(convs) == 1, [(n.op_type, n.name) for n in optimized.graph.node]
    return convs[0].input[1] not in produced


def test_fp32_reader_of_a_shared_weight_gets_it_as_a_constant_with_the_same_numbers():
    for per_channel in (True, False):
        model = _shared_weight_qdq(per_channel)
        assert not _float_conv_weight_is_constant(model)
        out = onnx.ModelProto()
        out.CopyFrom(model)
        changed = cleanup.keep_float(out, set())
        onnx.checker.check_model(out)
        assert changed == ["float"]
        assert _float_conv_weight_is_constant(out)
        # the int8 Conv keeps its quantized weight: onnxruntime still fuses it
        optimized = kernels.optimized_graph(out, PROVIDERS)
        assert optimized is not None
        assert [n.op_type for n in optimized.graph.node].count("QLinearConv") == 1
        x = np.random.default_rng(1).normal(0, 1, (2, 4, 10, 10)).astype(np.float32)
        (int8_ref, float_ref), (int8_got, float_got) = _run(model, x), _run(out, x)
        np.testing.assert_array_equal(int8_got, int8_ref)
        np.testing.assert_allclose(float_got, float_ref, rtol=1e-5, atol=1e-5)


def _tf2onnx_conv1d_stack() -> onnx.ModelProto:
    """tf2onnx's harmonic stack: one conv1d weight read by several Convs over slices."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (16, 16, 1, 5)).astype(np.float32), "k")]
    nodes = [
        helper.make_node("Conv", ["x", "k"], [f"c{i}"], name=f"conv{i}",
                         pads=[0, 2 * d, 0, 2 * d], dilations=[1, d])
        for i, d in enumerate((1, 2, 3))
    ]  # fmt: skip
    nodes += [
        helper.make_node("Add", ["c0", "c1"], ["s01"], name="add01"),
        helper.make_node("Add", ["s01", "c2"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "conv1d_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 1, 64])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_inc_int8_model_with_one_int8_reader_of_a_shared_weight():
    """A plan that keeps two of three Convs sharing a weight in fp32: they read the weight as a
    constant in the model inc returns, and their outputs are those of the graph before."""
    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(0, 1, (2, 16, 1, 64)).astype(np.float32)} for _ in range(3)]
    model = _tf2onnx_conv1d_stack()
    conf = PostTrainingQuantConfig(
        guards=False,
        op_name_dict={n: {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
                      for n in ("conv1", "conv2")},
    )  # fmt: skip
    q = quantization.fit(model, conf, calib_dataloader=calib)
    assert q.plan.ops["conv0"].quantized and not q.plan.ops["conv1"].quantized
    optimized = kernels.optimized_graph(q.model, PROVIDERS)
    assert optimized is not None
    produced = {o for n in optimized.graph.node for o in n.output}
    float_convs = [n for n in optimized.graph.node if n.op_type in ("Conv", "FusedConv")]
    assert float_convs, [n.op_type for n in optimized.graph.node]
    assert all(n.input[1] not in produced for n in float_convs), "a weight computed at run time"
    reference = onnx.ModelProto()
    reference.CopyFrom(q.model)
    assert cleanup.keep_float(reference, set()) == []  # nothing left to change
