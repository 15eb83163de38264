"""MiniLM as converters write it (issue 12, item 5): SmoothQuant and the attention mask on the
torch.onnx opset-14 (decomposed LayerNorm/GELU) and dynamo shapes, compared with the opset-17
graph of test_minilm. The exporter-shaped graphs come from ``conftest.exported_minilm``."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_ort import smooth_quant

from . import models
from .conftest import _decomposed_layernorm, exported_minilm

pytestmark = pytest.mark.slow

#: the opset-17 test's threshold (test_minilm.check_quality): mean cosine to fp32
MIN_COSINE = 0.99
SQ_AUTO = {"smooth_quant": True, "smooth_quant_args": {"alpha": "auto"}}


@pytest.fixture(scope="module")
def short_batches(reviews):
    """Reduced sequence length (32) keeps the three fits of this module small."""
    texts, _ = reviews
    return {
        "calib": [models.encode(texts[i : i + 8], max_length=32) for i in range(0, 32, 8)],
        "eval": [models.encode(texts[i : i + 100], max_length=32) for i in (400, 500)],
    }


def embed(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, b)[0] for b in batches])


def smoothed_matmuls(model: onnx.ModelProto) -> set[str]:
    """MatMuls whose activation comes (through Q/DQ) from a SmoothQuant Mul."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = set()
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[0])
        while source is not None and source.op_type in ("QuantizeLinear", "DequantizeLinear"):
            source = producers.get(source.input[0])
        if source is not None and source.name.endswith("/smooth_quant_mul"):
            out.add(node.name)
    return out


def weighted_matmuls(model: onnx.ModelProto) -> set[str]:
    inits = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


def assert_mask_stays_float(model: onnx.ModelProto) -> None:
    """The additive mask (-1e4, finfo.min or -inf) is read by float Adds only: no Q reads it or
    the Add's output, and no quantized tensor has a range wide enough to hold it."""
    readers = [n for n in model.graph.node if "mask/additive" in n.input]
    assert readers and {n.op_type for n in readers} == {"Add"}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert "mask/additive" not in quantized
    assert not quantized & {n.output[0] for n in readers}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [
        float(np.max(inits[n.input[1]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in inits
    ]
    assert scales and max(scales) < 1.0, max(scales)  # MiniLM's activations span < 255


@pytest.mark.parametrize(
    ("exporter", "attention"),
    [("torch14", "eager"), ("dynamo", "sdpa")],
    ids=["torch14-decomposed", "dynamo-sdpa"],
)
def test_smooth_quant_on_exported_minilm(minilm, short_batches, exporter, attention):
    model = exported_minilm(minilm, exporter, attention)
    conf = PostTrainingQuantConfig(approach="static", recipes=SQ_AUTO, guards=False)
    q = quantization.fit(model, conf, calib_dataloader=short_batches["calib"])
    # the same 36 MatMuls as on the opset-17 graph (measured there with this helper, and
    # test_recipes' 24 groups): q/k/v, attention output, FFN in and out of 6 layers
    assert smoothed_matmuls(q.model) == weighted_matmuls(minilm)
    assert_mask_stays_float(q.model)
    a, b = embed(q.model, short_batches["eval"]), embed(model, short_batches["eval"])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= MIN_COSINE, f"mean cosine {cos.mean():.4f}"


def test_static_on_sdpa_export_with_an_infinite_mask(minilm, short_batches):
    model = exported_minilm(minilm, "torch14", "sdpa")
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(model, conf, calib_dataloader=short_batches["calib"][:1])
    assert_mask_stays_float(q.model)


# --------------------------------------------------------------------------- folding, small


def pre_ln_block(shared_gamma: bool = False, seed: int = 0) -> onnx.ModelProto:
    """A pre-LN block as torch.onnx < 17 writes it: decomposed LayerNorm feeding only q/k/v."""
    rng = np.random.default_rng(seed)
    c = 16
    gamma = (1 + rng.normal(size=c)).astype(np.float32)
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(rng.normal(size=c).astype(np.float32), "beta"),
    ]
    ln = helper.make_node(
        "LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", epsilon=1e-5
    )
    nodes = _decomposed_layernorm(ln)
    outputs = []
    for name in ("q", "k", "v"):
        inits.append(
            numpy_helper.from_array(rng.normal(size=(c, c)).astype(np.float32), f"w_{name}")
        )
        nodes.append(helper.make_node("MatMul", ["h", f"w_{name}"], [name], name=f"{name}/MatMul"))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "S", c]))
    if shared_gamma:  # the same constant read elsewhere: rescaling it would change that op
        nodes.append(helper.make_node("Mul", ["x", "gamma"], ["other"], name="other"))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", "S", c]))
    graph = helper.make_graph(
        nodes,
        "pre_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", c])],
        outputs,
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("shared_gamma", [False, True], ids=["folds", "shared-gamma-gets-a-mul"])
def test_smooth_quant_folds_into_a_decomposed_layernorm(shared_gamma):
    model = pre_ln_block(shared_gamma)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 16)).astype(np.float32)
    x[..., 3] *= 30  # an outlier channel, what SmoothQuant is for
    scales = smooth_quant.compute(model, [{"x": x}], {"alpha": 0.5})
    smoothed = smooth_quant.apply(model, scales)
    muls = [n for n in smoothed.graph.node if n.name.endswith("/smooth_quant_mul")]
    assert len(muls) == (1 if shared_gamma else 0)
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in smoothed.graph.initializer}
    assert np.allclose(after["gamma"], before["gamma"]) == shared_gamma
    for got, want in zip(run(smoothed, x), run(model, x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
