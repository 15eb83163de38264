"""cleanup.float_pools: a MaxPool between int8 tensors runs as onnxruntime's fp32 pool on a
dequantized input instead of its generic int8 loop, with the same numbers. Checked with
onnxruntime itself: the kernels it runs and the outputs against the graph before the rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_ort import cleanup, kernels

PROVIDERS = ["CPUExecutionProvider"]


def _qdq_pool(
    shape: tuple[int, ...] = (2, 8, 12, 12),
    opset: int = 13,
    known_shape: bool = True,
    zero_type: int = TensorProto.UINT8,
    **pool: object,
) -> onnx.ModelProto:
    """x -> Q -> DQ -> MaxPool -> Q -> DQ -> y, as onnxruntime's quantizer writes a pool between
    int8 ops (one scale on both sides)."""
    np_zero = np.uint8 if zero_type == TensorProto.UINT8 else np.int8
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(100 if np_zero is np.uint8 else 3, np_zero), "z"),
    ]
    pool = pool or {"kernel_shape": [2] * (len(shape) - 2), "strides": [2] * (len(shape) - 2)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_dq"),
        helper.make_node("MaxPool", ["xd"], ["p"], name="pool", **pool),
        helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], name="p_q"),
        helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["y"], name="p_dq"),
    ]
    dims = list(shape) if known_shape else ["N", "C", *["L"] * (len(shape) - 2)]
    graph = helper.make_graph(
        nodes, "qdq_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "C", *["M"] * (len(shape) - 2)])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
    return np.asarray(session.run(None, feed)[0])


def _pool_kernel(model: onnx.ModelProto) -> str:
    """What onnxruntime runs for the MaxPool: "int8" (its generic loop), "nhwc" (its NHWC int8
    kernel) or "fp32"."""
    optimized = kernels.optimized_graph(model, PROVIDERS)
    assert optimized is not None
    int8 = kernels.int8_tensors(optimized)
    pools = [n for n in optimized.graph.node if "MaxPool" in n.op_type]
    assert len(pools) == 1, [n.op_type for n in optimized.graph.node]
    if pools[0].op_type == "NhwcMaxPool":
        return "nhwc"
    return "int8" if pools[0].input[0] in int8 else "fp32"


def _rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    changed = cleanup.float_pools(copy)
    onnx.checker.check_model(copy)
    return copy, changed


@pytest.mark.parametrize(
    "shape,pool,zero_type",
    [
        ((2, 8, 12, 12), {}, TensorProto.UINT8),
        # YOLOv8's SPPF pool: 5x5, stride 1, padded (the slowest int8 case measured)
        ((2, 8, 10, 10), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}, TensorProto.UINT8),
        ((2, 8, 12, 12), {}, TensorProto.INT8),
        ((2, 8, 20), {}, TensorProto.UINT8),  # a 1-D pool over [N, C, L]
    ],
    ids=["2x2", "sppf_5x5", "int8", "1d"],
)
def test_pool_runs_in_fp32_with_the_same_numbers(shape, pool, zero_type):
    model = _qdq_pool(shape, zero_type=zero_type, **pool)
    assert _pool_kernel(model) == "int8"  # onnxruntime dropped the Q/DQ pair
    out, changed = _rewritten(model)
    assert changed == ["pool"]
    assert _pool_kernel(out) == "fp32"
    x = np.random.default_rng(0).normal(0.0, 3.0, shape).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(model, {"x": x}))


def test_channels_from_the_conv_that_wrote_the_tensor():
    """No shape recorded anywhere: the Conv's weight says how many channels the pool reads."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="c_q"),
        helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="c_dq"),
        helper.make_node("MaxPool", ["cd"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "conv_pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "K", "P", "Q"])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    out, changed = _rewritten(model)
    assert changed == ["pool"]
    scale = next(i for i in out.graph.initializer if i.name == "pool_inc_float_pool_scale")
    assert list(scale.dims) == [6]
    x = rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"x": x}), _run(model, {"x": x}))


@pytest.mark.parametrize(
    "kwargs,why",
    [
        ({"opset": 12}, "DequantizeLinear has no axis before opset 13"),
        ({"known_shape": False}, "the channel count is nowhere in the graph"),
    ],
)
def test_pools_it_cannot_rewrite_are_left_alone(kwargs, why):
    model = _qdq_pool(**kwargs)
    out, changed = _rewritten(model)
    assert changed == [], why
    assert out.SerializeToString() == model.SerializeToString(), why


def test_a_model_onnxruntime_cannot_load_keeps_its_pools():
    """The check loads the model; where that fails (here an op no provider has) nothing
    changes and nothing raises: an int8 pool is slower, never wrong."""
    model = _qdq_pool()
    model.graph.node.append(helper.make_node("Unknown", ["y"], ["z"], domain="inc.test"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("inc.test", 1))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert cleanup.float_pools(copy) == []
    assert copy.SerializeToString() == model.SerializeToString()


def test_a_float_pool_is_left_alone():
    model = _qdq_pool()
    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    nodes = [n for n in float_model.graph.node if n.name not in ("x_q", "x_dq")]
    nodes[0].input[0] = "x"
    del float_model.graph.node[:]
    float_model.graph.node.extend(nodes)
    _, changed = _rewritten(float_model)
    assert changed == []


def _conv_pool_conv() -> onnx.ModelProto:
    """A small CNN whose MaxPool sits between two int8 convs."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (16, 16, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[3, 3],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_pool_between_int8_convs_keeps_onnxruntime_nhwc_int8_kernel():
    """Between two int8 convs onnxruntime runs the pool as NhwcMaxPool in the convs' layout,
    faster than leaving it (measured: 64 channels 56x56 3x3/2 2.6 ms against 4.4 ms with the
    pool in fp32 and the transposes it needs): inc's own int8 model keeps it."""
    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    q = quantization.fit(
        _conv_pool_conv(), PostTrainingQuantConfig(guards=False), calib_dataloader=calib
    )
    assert _pool_kernel(q.model) == "nhwc"
    out, changed = _rewritten(q.model)
    assert changed == []
    assert out.SerializeToString() == q.model.SerializeToString()


def _counting_optimized_graph(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the times float_pools asks onnxruntime for its optimized graph (the real call
    still runs: this only counts it)."""
    calls: list[int] = []
    real = kernels.optimized_graph

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "optimized_graph", counted)
    return calls


def test_a_pool_between_int8_convs_is_not_checked_with_onnxruntime(monkeypatch):
    """The check costs 0.2-0.35 s a build; a pool plainly between two int8 convs (onnxruntime's
    NhwcMaxPool) is known without it, so a conv-pool-conv build never asks."""
    rng = np.random.default_rng(3)
    calib = [{"x": rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    q = quantization.fit(
        _conv_pool_conv(), PostTrainingQuantConfig(guards=False), calib_dataloader=calib
    )
    calls = _counting_optimized_graph(monkeypatch)
    out, changed = _rewritten(q.model)
    assert changed == [] and calls == []
    assert out.SerializeToString() == q.model.SerializeToString()


def test_a_pool_outside_int8_convs_is_still_checked(monkeypatch):
    calls = _counting_optimized_graph(monkeypatch)
    _, changed = _rewritten(_qdq_pool())
    assert changed == ["pool"] and len(calls) == 1


def test_a_pool_whose_sides_differ_is_not_checked(monkeypatch):
    """Another scale after the pool (YOLOv8's SPPF pools, each calibrated on its own):
    onnxruntime keeps DQ -> MaxPool -> Q, the pool runs in fp32 already, nothing to ask."""
    model = _qdq_pool()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.04, np.float32), "s2"))
    q = next(n for n in model.graph.node if n.name == "p_q")
    q.input[1] = "s2"
    assert _pool_kernel(model) == "fp32"
    calls = _counting_optimized_graph(monkeypatch)
    _, changed = _rewritten(model)
    assert changed == [] and calls == []


def test_ppocr_cls_int8_build_runs_its_pools_in_fp32():
    """PP-OCR's text-line classifier (rapidocr-onnxruntime wheel): its MaxPools sit after
    hard-swish gates, where onnxruntime would run them with its generic int8 loop; inc's build
    (fit, guards off) runs every one in fp32 and agrees with fp32 on the real inputs."""
    from tests.corpus.onnx_models import MODELS

    corpus = MODELS["ppocr-cls"]
    model = onnx.load(str(corpus.path()))
    assert any(n.op_type == "MaxPool" for n in model.graph.node)
    q = quantization.fit(
        model, PostTrainingQuantConfig(guards=False), calib_dataloader=corpus.batches("calib", 4)
    )
    optimized = kernels.optimized_graph(q.model, PROVIDERS)
    assert optimized is not None
    int8 = kernels.int8_tensors(optimized)
    pools = [n for n in optimized.graph.node if "MaxPool" in n.op_type]
    assert pools, [n.op_type for n in optimized.graph.node]
    assert all(n.op_type == "MaxPool" and n.input[0] not in int8 for n in pools)
    assert any(n.name.endswith("_inc_float_pool_dq") for n in q.model.graph.node)
    feeds = corpus.batches("eval", 1)[0]
    ref, got = (_run_all(m, feeds) for m in (model, q.model))
    assert corpus.fidelity([ref], [got]) >= 0.9


def _run_all(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS)
    return [np.asarray(o) for o in session.run(None, feed)]
