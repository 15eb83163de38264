"""Converter graphs that once made inc (or onnxruntime's quantizer under it) write a model
onnxruntime cannot load; each is built in the shape the converter writes (converter_graphs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ModelError
from inc_ort.quantizer import check_single_definitions, tensor_names

from . import converter_graphs as cg


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_2:0": x})


def _signal(batches: int, seed: int) -> list[np.ndarray]:
    t = np.linspace(0, 1, 32, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return [
        np.stack(
            [np.sin(2 * np.pi * f * t)[None, :, None] * np.ones(4, np.float32) for f in freqs]
        ).astype(np.float32)
        + rng.normal(0, 0.05, (len(freqs), 1, 32, 4)).astype(np.float32)
        for freqs in rng.uniform(1, 8, (batches, 8))
    ]


@pytest.fixture
def shared_bias() -> onnx.ModelProto:
    model = cg.tf2onnx_shared_bias_numbered_names()
    onnx.checker.check_model(model, full_check=True)
    layer = "model_1/cq_t/conv1d_25;model_1/cq_t/conv1d_25"
    # the precondition of the bug: the name onnxruntime gives the bias copy is an activation
    assert f"{layer}0" in {o for n in model.graph.node for o in n.output}
    return model


def test_a_shared_bias_copy_never_takes_a_converter_tensor_name(shared_bias):
    before = shared_bias.SerializeToString()
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(shared_bias, conf, calib_dataloader=_signal(3, 0))
    assert shared_bias.SerializeToString() == before  # the user's model is untouched
    types = {n.op_type for n in q.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= types
    convs = [op for op in q.op_report() if op["type"] == "Conv"]
    assert len(convs) == 2 and all(op["weight"] == "int8" for op in convs)
    check_single_definitions(q.model.graph)
    x = _signal(1, 1)[0]
    ref, out = _run(shared_bias, x), _run(q.model, x)  # loads: no Transpose of a rank-1 bias
    for r, o in zip(ref, out, strict=True):
        assert o.shape == r.shape
        cos = float(np.dot(r.ravel(), o.ravel()) / np.linalg.norm(r) / np.linalg.norm(o))
        assert cos > 0.99


def test_the_default_flow_returns_a_model_onnxruntime_loads(shared_bias):
    q = quantization.fit(shared_bias, PostTrainingQuantConfig(), calib_dataloader=_signal(4, 0))
    x = _signal(1, 2)[0]
    for r, o in zip(_run(shared_bias, x), _run(q.model, x), strict=True):
        assert o.shape == r.shape


def test_a_tensor_defined_twice_is_named_in_the_error():
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["b0"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", f, [2])],
        [helper.make_tensor_value_info("b0", f, [2])],
        [onnx.numpy_helper.from_array(np.zeros(2, np.float32), "b0")],
    )
    assert {"x", "b0"} <= tensor_names(graph)
    with pytest.raises(ModelError, match=r"'b0' \(output of Relu 'relu'\).*one producer"):
        check_single_definitions(graph)
