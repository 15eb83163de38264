"""Fusion-aware planning: every op inc plans int8 runs as an int8 kernel in onnxruntime, tensors
stay int8 between int8 ops, and each op's output can be read back for its sqnr_db."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core import backend as registry
from inc_ort import kernels

from . import models


@pytest.fixture(scope="module")
def resnet() -> onnx.ModelProto:
    return models.resnet_like()


@pytest.fixture(scope="module")
def batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.random((4, 3, 32, 32), dtype=np.float32) for _ in range(3)]


def _int8_ops_not_running_int8(q) -> dict[str, str]:  # type: ignore[no-untyped-def]
    runs = registry.by_name("onnxrt").runs_as(q.model)
    return {
        op: runs.get(op, "missing")
        for op in q.plan.quantized_ops()
        if not kernels.is_int8(runs.get(op, ""))
    }


@pytest.mark.parametrize("quant_format", ["QDQ", "QOperator"])
def test_every_op_planned_int8_runs_as_an_int8_kernel(resnet, batches, quant_format):
    # guards off: the speed guard may time an op back to fp32 on a busy machine; this is about planning
    conf = PostTrainingQuantConfig(approach="static", quant_format=quant_format, guards=False)
    q = quantization.fit(resnet, conf, calib_dataloader=batches)
    planned = q.plan.quantized_ops()
    assert {
        "stem",
        "layer0.0.conv2",
        "layer1.0.downsample",
        "layer1.0.add",
        "avgpool",
        "fc",
    } <= set(planned)
    assert _int8_ops_not_running_int8(q) == {}


def test_digits_cnn_int8_ops_run_as_int8_kernels(cnn, calib):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static", guards=False), calib_dataloader=calib)
    assert _int8_ops_not_running_int8(q) == {}


def test_residual_adds_are_int8_but_not_a_transformers_residual_before_layernorm(resnet, minilm):
    backend = registry.by_name("onnxrt")
    conf = PostTrainingQuantConfig()
    resnet_ops = {op.name: op.type for op in backend.ops(backend.load_model(resnet, conf))}
    assert [n for n, t in resnet_ops.items() if t == "Add"] == [
        f"layer{s}.{b}.add" for s in range(3) for b in range(2)
    ]
    minilm_types = {op.type for op in backend.ops(backend.load_model(minilm, conf))}
    assert "Add" not in minilm_types and "Mul" not in minilm_types
    assert "MatMul" in minilm_types


def test_a_conv_writing_a_graph_output_still_runs_as_qlinearconv(resnet, batches):
    # cut the graph after the first residual block: its last conv's output is the graph output
    model = onnx.ModelProto()
    model.CopyFrom(resnet)
    keep = []
    for node in model.graph.node:
        keep.append(node)
        if node.name == "layer0.0.conv2":
            break
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(
            "layer0.0.conv2_out", onnx.TensorProto.FLOAT, ["N", 16, 32, 32]
        )
    )
    q = quantization.fit(
        model, PostTrainingQuantConfig(approach="static", guards=False), calib_dataloader=batches
    )
    runs = registry.by_name("onnxrt").runs_as(q.model)
    assert runs["layer0.0.conv2"] == "QLinearConv"


def test_runs_as_shows_the_ops_a_rule_keeps_in_fp32(resnet, batches):
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    conf = PostTrainingQuantConfig(approach="static", op_name_dict={"layer1.1.conv1": fp32}, guards=False)
    q = quantization.fit(resnet, conf, calib_dataloader=batches)
    runs = registry.by_name("onnxrt").runs_as(q.model)
    assert not kernels.is_int8(runs["layer1.1.conv1"]), runs["layer1.1.conv1"]
    assert runs["layer1.1.conv1"].endswith("(fp32)")
    assert _int8_ops_not_running_int8(q) == {}


@pytest.mark.parametrize("quant_format", ["QDQ", "QOperator"])
def test_op_outputs_of_fp32_and_int8_models_line_up(resnet, batches, quant_format):
    backend = registry.by_name("onnxrt")
    conf = PostTrainingQuantConfig(approach="static", quant_format=quant_format, guards=False)
    q = quantization.fit(resnet, conf, calib_dataloader=batches)
    fp32_model = backend.load_model(resnet, conf)
    ops = q.plan.quantized_ops()
    fp32 = backend.op_outputs(fp32_model, batches[0], ops)
    int8 = backend.op_outputs(q.model, batches[0], ops)
    assert set(fp32) == set(ops)
    assert set(int8) == set(ops)
    for op in ops:
        assert fp32[op].shape == int8[op].shape, op
        noise = float(np.sum((fp32[op] - int8[op]) ** 2))
        sqnr = 10 * np.log10(float(np.sum(fp32[op] ** 2)) / max(noise, 1e-30))
        assert 15.0 < sqnr < 80.0, (op, sqnr)  # int8 rounding is there, and small


def test_kernel_names_map_back_to_op_names_that_hold_slashes():
    known = {"/model.0/conv/Conv", "pool/AvgPool", "fc"}
    assert kernels.origin("/model.0/conv/Conv_token_12", known) == "/model.0/conv/Conv"
    assert kernels.origin("pool/AvgPool/fused", known) == "pool/AvgPool"
    assert kernels.origin("fc_quant", known) == "fc"
    assert kernels.origin("/model.0/conv/Conv", known) == "/model.0/conv/Conv"
    assert kernels.origin("fc_quant") == "fc"  # without names: inc's and onnxruntime's suffixes


def _lcnet_like() -> onnx.ModelProto:
    """PP-LCNet's shape: a 3-channel stem, depthwise 3x3 and 5x5 convs, 1x1 convs widening
    16 -> 32 -> 64 -> 128 channels."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    layers = [  # name, out, in per group, kernel, group
        ("stem", 16, 3, 3, 1),
        ("dw3", 16, 1, 3, 16),
        ("pw16", 32, 16, 1, 1),
        ("dw5", 32, 1, 5, 32),
        ("pw32", 64, 32, 1, 1),
        ("pw64", 128, 64, 1, 1),
    ]
    nodes, inits, prev = [], [], "x"
    for name, out, cin, k, group in layers:
        w = rng.standard_normal((out, cin, k, k)).astype(np.float32) * 0.1
        inits.append(onnx.numpy_helper.from_array(w, f"{name}.w"))
        nodes.append(
            h.make_node(
                "Conv", [prev, f"{name}.w"], [name], name=name, group=group, pads=[k // 2] * 4
            )
        )
        prev = name
    graph = h.make_graph(
        nodes,
        "lcnet_like",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 16, 16])],
        [h.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, 128, 16, 16])],
        inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_kernel_groups_name_the_stem_then_depthwise_then_few_products_one_group_each():
    groups = kernels.kernel_groups(_lcnet_like())
    # products per output: stem 27 (3 input channels), dw3 9, pw16 16, dw5 25, pw32 32, pw64
    # 64; dw3 is below graph.MIN_REDUCTION but listed as a depthwise conv
    assert list(groups.items()) == [  # the order the speed guard tries them in
        (f"Conv (< {kernels.FEW_CHANNELS} input channels)", ["stem"]),
        ("Conv (depthwise)", ["dw3", "dw5"]),
        (f"Conv (< {kernels.FEW_PRODUCTS} products per output)", ["pw16", "pw32"]),
    ]


def test_depthwise_convs_are_listed_whatever_their_k_but_not_a_small_dense_conv():
    model = _lcnet_like()
    # a dense 1x1 conv over 8 channels (K = 8 < graph.MIN_REDUCTION) after the last conv
    w = np.full((8, 128, 1, 1), 0.01, np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "narrow.w"))
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.full((4, 8, 1, 1), 0.1, np.float32), "k8.w")
    )
    model.graph.node.extend(
        [
            onnx.helper.make_node("Conv", ["pw64", "narrow.w"], ["narrow"], name="narrow"),
            onnx.helper.make_node("Conv", ["narrow", "k8.w"], ["k8"], name="k8"),
        ]
    )
    model.graph.output[0].CopyFrom(
        onnx.helper.make_tensor_value_info("k8", onnx.TensorProto.FLOAT, [1, 4, 16, 16])
    )
    backend = registry.by_name("onnxrt")
    listed = [op.name for op in backend.ops(backend.load_model(model, PostTrainingQuantConfig()))]
    assert listed == ["stem", "dw3", "pw16", "dw5", "pw32", "pw64", "narrow"]


def test_a_depthwise_separable_chain_runs_int8_from_end_to_end():
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(_lcnet_like(), conf, calib_dataloader=batches)
    assert {"dw3", "dw5"} <= set(q.plan.quantized_ops())
    assert _int8_ops_not_running_int8(q) == {}


def test_the_backends_kernel_groups_are_ops_users_can_name():
    backend = registry.by_name("onnxrt")
    model = backend.load_model(_lcnet_like(), PostTrainingQuantConfig())
    listed = {op.name for op in backend.ops(model)}
    groups = backend.kernel_groups(model)
    assert all(set(names) <= listed for names in groups.values())
