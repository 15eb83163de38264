"""Every ONNX Runtime recipe of the spec, each shown by its effect on the graph or the numbers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization, scheme
from inc_ort import smooth_quant
from inc_ort.backend import OrtBackend

from .conftest import top1


def fit(model, calib, **recipes):
    # these tests check what each recipe writes into the graph: the guards' measured fallbacks
    # (test_guards, tests/ort/test_corpus.py) would make that depend on the machine's load
    conf = PostTrainingQuantConfig(approach="static", recipes=recipes, guards=False)
    return quantization.fit(model, conf, calib_dataloader=calib)


def counts(model):
    return Counter(n.op_type for n in model.graph.node)


def node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def float_inits(model):
    return {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}


def run(model, feed):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feed
    )[0]


def test_first_and_last_conv_or_matmul_stay_fp32_when_asked(cnn, calib):
    q = fit(
        cnn, calib, first_conv_or_matmul_quantization=False, last_conv_or_matmul_quantization=False
    )
    # conv1 is the first quantizable conv (conv0 reads one channel and is never int8), fc1 the last
    floats = float_inits(q.model)
    assert node(q.model, "conv1").input[1] in floats
    assert node(q.model, "fc1").input[1] in floats
    assert node(q.model, "conv2").input[1] not in floats
    assert {"conv1", "fc1"} <= set(q.plan.float_ops())  # the plan inc.json shows says so too
    default = fit(cnn, calib)
    assert node(default.model, "conv1").input[1] not in float_inits(default.model)


def _pre_post_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Concat", ["x", "x"], ["pre"], name="pre_concat", axis=1),
            helper.make_node("MatMul", ["pre", "w"], ["y"], name="matmul"),
            helper.make_node("Concat", ["y", "y"], ["out"], name="post_concat", axis=1),
        ],
        "pre_post",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pre_post_process_quantization(calib):
    model = _pre_post_model()
    data = [np.random.default_rng(1).normal(size=(16, 8)).astype(np.float32)]
    with_pp = fit(model, data)
    without = fit(model, data, pre_post_process_quantization=False)
    assert {"pre_concat", "matmul"} <= set(with_pp.plan.quantized_ops())
    assert "post_concat" not in with_pp.plan.ops  # it writes the model's output: no int8 reader
    # with the recipe off, the Concats read and write float: no Q/DQ on their outputs
    q_inputs = {n.input[0] for n in without.model.graph.node if n.op_type == "QuantizeLinear"}
    assert "out" not in q_inputs and "x" not in q_inputs
    assert counts(without.model)["QuantizeLinear"] < counts(with_pp.model)["QuantizeLinear"]


def test_gemm_to_matmul_rewrites_gemm_keeping_names(cnn, calib, digits, fp32_top1):
    q = fit(cnn, calib, gemm_to_matmul=True)
    assert counts(q.model)["Gemm"] == 0
    assert node(q.model, "fc0").op_type == "MatMul" and node(q.model, "fc0_bias").op_type == "Add"
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_graph_optimization_level(cnn, calib):
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    flatten = node(model, "flatten")
    flatten.output[0] = "flat_raw"
    model.graph.node.insert(
        list(model.graph.node).index(flatten) + 1,
        helper.make_node("Identity", ["flat_raw"], ["flat"], name="identity"),
    )
    assert counts(fit(model, calib).model)["Identity"] == 0  # ENABLE_BASIC (default) removes it
    assert counts(fit(model, calib, graph_optimization_level="DISABLE_ALL").model)["Identity"] == 1


def test_add_qdq_pair_to_weight_keeps_float_weights_with_qdq(cnn, calib):
    q = fit(cnn, calib, add_qdq_pair_to_weight=True)
    weights = {"conv1.weight", "conv2.weight"}
    quantized_weights = {
        n.input[0] for n in q.model.graph.node if n.op_type == "QuantizeLinear"
    } & weights
    assert quantized_weights == weights
    assert weights <= float_inits(q.model)
    default = fit(cnn, calib)
    assert not (
        {n.input[0] for n in default.model.graph.node if n.op_type == "QuantizeLinear"} & weights
    )


def test_optypes_to_exclude_output_quant(cnn, calib):
    q = fit(cnn, calib, optypes_to_exclude_output_quant=["Conv"])
    conv_outputs = {"conv1_out", "conv2_out"}
    assert not conv_outputs & {
        n.input[0] for n in q.model.graph.node if n.op_type == "QuantizeLinear"
    }
    assert counts(q.model)["Relu"] >= 3  # the Relus are no longer folded into a Q
    assert counts(fit(cnn, calib).model)["Relu"] == 1  # only relu0, after the fp32 conv0


def test_dedicated_qdq_pair_gives_each_consumer_its_own_dq():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "wa"], ["a"], name="left"),
            helper.make_node("MatMul", ["x", "wb"], ["b"], name="right"),
            helper.make_node("Concat", ["a", "b"], ["y"], name="join", axis=1),
        ],
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), n)
            for n in ("wa", "wb")
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = [rng.normal(size=(16, 16)).astype(np.float32)]

    def x_dq_nodes(q):
        q_out = {
            n.output[0]
            for n in q.model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == "x"
        }
        return [
            n for n in q.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_out
        ]

    assert len(x_dq_nodes(fit(model, data))) == 1
    assert len(x_dq_nodes(fit(model, data, dedicated_qdq_pair=True))) == 2


def _dq_weight(q, weight):
    dq = next(
        n
        for n in q.model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith(weight)
    )
    values = {i.name: numpy_helper.to_array(i) for i in q.model.graph.initializer}
    scale = values[dq.input[1]].astype(np.float64)
    return (
        values[dq.input[0]].astype(np.float64) - values[dq.input[2]].reshape(-1, 1, 1, 1)
    ) * scale.reshape(-1, 1, 1, 1)


def test_weight_correction_restores_per_channel_std(cnn, calib):
    w = numpy_helper.to_array(
        next(i for i in cnn.graph.initializer if i.name == "conv1.weight")
    ).astype(np.float64)
    fixed = _dq_weight(fit(cnn, calib, weight_correction=True), "conv1.weight")
    plain = _dq_weight(fit(cnn, calib), "conv1.weight")
    std = w.reshape(len(w), -1).std(1)
    np.testing.assert_allclose(fixed.reshape(len(w), -1).std(1), std, rtol=1e-4)
    assert not np.allclose(plain.reshape(len(w), -1).std(1), std, rtol=1e-4)


def test_fast_bias_correction_adds_the_mean_weight_error(cnn, calib, digits, fp32_top1):
    q = fit(cnn, calib, fast_bias_correction=True)
    plain = fit(cnn, calib)

    def bias_real(model, conv):
        dq = next(
            n
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0].startswith(f"{conv}.bias")
        )
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return values[dq.input[0]].astype(np.float64) * values[dq.input[1]].astype(np.float64)

    w = numpy_helper.to_array(
        next(i for i in cnn.graph.initializer if i.name == "conv1.weight")
    ).astype(np.float64)
    params = scheme.weight_qparams(w, granularity="per_channel", axis=0, convention="onnxrt")
    x = np.concatenate([b[0] for b in calib])
    # conv1's input is relu0's output: recompute it with the fp32 model
    sess_model = onnx.ModelProto()
    sess_model.CopyFrom(cnn)
    sess_model.graph.output.append(helper.make_empty_tensor_value_info("relu0_out"))
    relu0 = ort.InferenceSession(
        sess_model.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(["relu0_out"], {"image": x})[0]
    expected = (w - scheme.fake_quantize(w, params)).sum(axis=(2, 3)) @ relu0.mean(axis=(0, 2, 3))
    delta = bias_real(q.model, "conv1") - bias_real(plain.model, "conv1")
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(delta, expected, atol=scale * 0.05 + 1e-6)
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_smooth_quant_folds_into_the_previous_gemm_and_keeps_the_function(
    cnn, calib, digits, fp32_top1
):
    backend = OrtBackend()
    conf = PostTrainingQuantConfig(
        approach="static", recipes={"smooth_quant": True, "smooth_quant_args": {"alpha": 0.5}}
    )
    native = backend.load_model(cnn, conf)
    from inc_core.quantization import prepare_session

    plan = prepare_session(cnn, conf, calib).default_plan
    scales = smooth_quant.compute(native, [b[0] for b in calib], plan.recipes["smooth_quant_args"])
    assert set(smooth_quant.alphas(scales).values()) == {0.5}
    smoothed = smooth_quant.apply(native, scales)
    # fc1 reads relu(fc0): 1/s folds into fc0's output channels, fc1 still reads the Relu;
    # fc0 reads a Flatten, which cannot absorb it: one Mul is inserted there
    assert node(smoothed, "fc1").input[0] == "fc_relu_out"
    assert counts(smoothed)["Mul"] == 1 and node(smoothed, "fc0").input[0].endswith("/smoothed")
    w0 = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}["fc1.weight"]
    assert not np.allclose(
        w0,
        numpy_helper.to_array(next(i for i in native.graph.initializer if i.name == "fc1.weight")),
    )
    x = digits.x_test[:64]
    np.testing.assert_allclose(
        run(smoothed, {"image": x}), run(native, {"image": x}), rtol=1e-4, atol=1e-4
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert top1(q.model, digits) >= fp32_top1 * 0.99


@pytest.mark.slow
def test_smooth_quant_auto_alpha_per_layer_on_minilm(minilm):
    from ..datasets import rotten_tomatoes
    from . import models

    texts, _ = rotten_tomatoes(limit=48)
    data = [models.encode(texts[i : i + 16], max_length=32) for i in range(0, 48, 16)]
    scales = smooth_quant.compute(minilm, data, {"alpha": "auto"})
    alphas = smooth_quant.alphas(scales)
    # per layer: the q/k/v input (one shared scale), the attention context, FFN in and FFN out
    assert len(alphas) == 6 * 4
    assert set(alphas.values()) <= set(smooth_quant.AUTO_GRID)
    smoothed = smooth_quant.apply(minilm, scales)
    assert (
        counts(smoothed)["Mul"] > counts(minilm)["Mul"]
    )  # LayerNorm outputs also feed residual Adds: Mul inserted
    np.testing.assert_allclose(run(smoothed, data[0]), run(minilm, data[0]), rtol=1e-3, atol=1e-4)


def test_fast_bias_correction_reaches_the_bias_add_after_a_matmul():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(32, 8)).astype(np.float32)
    b = rng.normal(size=8).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
            helper.make_node("Add", ["xw", "b"], ["y"], name="bias_add"),
        ],
        "matmul_bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (rng.normal(size=(4, 6, 32)) + 0.5).astype(np.float32)  # non-zero mean per channel
    q = fit(model, [x], fast_bias_correction=True)
    corrected = {i.name: numpy_helper.to_array(i) for i in q.model.graph.initializer}["b"]
    params = scheme.weight_qparams(w, granularity="per_channel", axis=1, convention="onnxrt")
    expected = b + x.reshape(-1, 32).mean(0) @ (w - scheme.fake_quantize(w, params))
    np.testing.assert_allclose(corrected, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(corrected, b, atol=1e-6)
