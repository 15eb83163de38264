"""inc_ort.canonical: each rewrite on graphs in the shape converters write, checked with
onnxruntime on random inputs (outputs equal to 1e-5 relative) and by the ops that remain."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from inc_ort.canonical import canonicalize, shapes
from inc_ort.canonical._graph import Graph

from . import converter_graphs as cg


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 2 for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.normal(0, 1, dims).astype(np.float32)
    return feeds


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, rtol: float = 1e-5) -> None:
    feeds = _feeds(a)
    for x, y in zip(_run(a, feeds), _run(b, feeds), strict=True):
        assert x.shape == y.shape
        scale = max(float(np.abs(x).max()), 1e-6)
        assert float(np.abs(x - y).max()) / scale <= rtol


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _step(report: list[dict], name: str) -> dict:
    return next(e for e in report if e["step"] == name)


def test_input_proto_is_not_touched() -> None:
    model = cg.paddle_conv_scale_bias()
    before = model.SerializeToString()
    out, _ = canonicalize(model)
    assert model.SerializeToString() == before
    assert out is not model


def test_report_format() -> None:
    _, report = canonicalize(cg.tf2onnx_nhwc_conv_bn())
    assert report[0]["step"] == "constants_to_initializers"
    for entry in report:
        assert set(entry) >= {"step", "rewrites", "nodes", "skipped", "seconds"}
        assert entry["rewrites"] == len(entry["nodes"])
        assert entry["skipped"] is None or isinstance(entry["skipped"], str)


@pytest.mark.parametrize("sub_mul_add", [False, True], ids=["add", "sub_mul_add"])
def test_tf2onnx_batch_norm_after_transpose_folds_into_conv(sub_mul_add: bool) -> None:
    model = cg.tf2onnx_nhwc_conv_bn(sub_mul_add=sub_mul_add)
    out, report = canonicalize(model)
    _same_outputs(model, out)
    ops = _ops(out)
    assert ops["Add"] == ops["Sub"] == ops["Mul"] == 0
    assert ops["Conv"] == 1 and ops["Transpose"] == 2
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    assert conv.name == "bn/mul_1" and len(conv.input) == 3  # keeps its name, gains a bias
    assert _step(report, "fold_affine")["nodes"][0].startswith("bn/mul_1 <- ")
    assert out.graph.output[0].name == "relu:0"


def test_paddle_scalar_affine_and_batch_norm_fold() -> None:
    model = cg.paddle_conv_scale_bias()
    out, report = canonicalize(model)
    _same_outputs(model, out)
    ops = _ops(out)
    assert ops["Constant"] == 0 and ops["Mul"] == ops["Add"] == ops["BatchNormalization"] == 0
    assert [n.name for n in out.graph.node if n.op_type == "Conv"] == ["p2o.Conv.0", "p2o.Conv.1"]
    assert _step(report, "constants_to_initializers")["rewrites"] == 9
    assert _step(report, "fold_affine")["rewrites"] == 2


def test_gemm_and_matmul_chains_fold() -> None:
    model = cg.gemm_matmul_chains()
    out, _ = canonicalize(model)
    _same_outputs(model, out)
    ops = _ops(out)
    assert ops["Mul"] == 0 and ops["Add"] == 1  # the MatMul keeps one Add for its shift
    assert [n.name for n in out.graph.node] == ["fc", "mm", "mm_add"]


def test_grouped_conv_transpose_batch_norm_folds() -> None:
    model = cg.conv_transpose_bn(groups=2)
    out, _ = canonicalize(model)
    _same_outputs(model, out)
    assert _ops(out) == Counter({"ConvTranspose": 1})


def test_chains_that_are_not_per_channel_affine_stay() -> None:
    model = cg.not_foldable()
    out, report = canonicalize(model)
    _same_outputs(model, out)
    assert _ops(out) == _ops(model)
    assert _step(report, "fold_affine")["rewrites"] == 0


def test_transposes_casts_identities() -> None:
    model = cg.layout_noise()
    out, report = canonicalize(model)
    _same_outputs(model, out, rtol=0)
    names = [n.name for n in out.graph.node]
    # the lossy float->half->float round trip stays; the merged transpose keeps its name
    assert names == ["relu", "to_half", "half_back", "merged"]
    merged = out.graph.node[-1]
    assert list(merged.attribute[0].ints) == [0, 3, 2, 1]
    assert out.graph.output[0].name == "y"
    assert set(_step(report, "transposes")["nodes"]) == {"to_nhwc", "merged"}
    assert set(_step(report, "casts")["nodes"]) == {"same_type", "back_to_float"}
    assert _step(report, "identities")["nodes"] == ["out_identity"]


def test_constant_subgraphs_fold() -> None:
    model = cg.constant_chain()
    out, report = canonicalize(model)
    _same_outputs(model, out, rtol=0)
    assert set(_step(report, "fold_constants")["nodes"]) == {"cast_w", "reshape_w", "transpose_w"}
    assert _ops(out) == Counter({"MatMul": 1, "Identity": 1})


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposed_layernorm_becomes_layer_normalization(opset: int) -> None:
    model = cg.torch_layernorm(opset=opset)
    out, report = canonicalize(model)
    _same_outputs(model, out)
    assert _ops(out) == Counter({"LayerNormalization": 1})
    assert out.graph.node[0].name == "/ln/ReduceMean"
    assert _step(report, "layernorm")["nodes"] == ["/ln/ReduceMean"]


def test_layernorm_below_opset_17_is_reported_not_rewritten() -> None:
    model = cg.torch_layernorm(opset=13)
    out, report = canonicalize(model)
    assert _ops(out) == _ops(model)
    entry = _step(report, "layernorm")
    assert entry["rewrites"] == 0
    assert entry["detail"] == {"left_decomposed": ["/ln/ReduceMean"], "reason": "opset 13 < 17"}


@pytest.mark.parametrize(
    ("kind", "opset", "op", "domain"),
    [
        ("erf", 13, "Gelu", "com.microsoft"),
        ("tanh", 13, "FastGelu", "com.microsoft"),
        ("erf", 20, "Gelu", ""),
        ("tanh", 20, "Gelu", ""),
    ],
)
def test_decomposed_gelu_becomes_fused_op(kind: str, opset: int, op: str, domain: str) -> None:
    model = cg.torch_gelu(kind, opset)
    out, report = canonicalize(model)
    _same_outputs(model, out, rtol=1e-4 if kind == "tanh" else 1e-5)
    assert [(n.op_type, n.domain) for n in out.graph.node] == [(op, domain)]
    assert _step(report, "gelu")["rewrites"] == 1


def test_shapes_type_every_tensor_and_name_the_method() -> None:
    out, report = canonicalize(cg.paddle_conv_scale_bias())
    entry = _step(report, "shapes")
    assert entry["skipped"] is None
    assert entry["detail"]["method"] in ("onnx", "symbolic", "runtime")
    assert shapes._untyped(out) == []


def test_runtime_shape_probe_marks_dynamic_dims_symbolic() -> None:
    model = cg.gemm_matmul_chains()
    inferred = shapes._with_runtime(model)
    dims = {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in inferred.graph.value_info
    }
    assert dims["fc"][1] == 6 and isinstance(dims["fc"][0], str)


def test_runtime_shape_probe_keeps_downsampled_dims_symbolic() -> None:
    # three stride-2 convs over a dynamic H x W, then a global pool: the probe's sizes must stay
    # apart through the downsampling (1 and 2 both gave 1x1 maps, written as fixed 1)
    h = onnx.helper
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(3):
        w = rng.normal(0, 0.1, (4, 3 if i == 0 else 4, 3, 3)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(
            h.make_node(
                "Conv", [prev, f"w{i}"], [f"c{i}"], name=f"c{i}", strides=[2, 2], pads=[1] * 4
            )
        )
        prev = f"c{i}"
    nodes.append(h.make_node("GlobalAveragePool", [prev], ["y"], name="gap"))
    graph = h.make_graph(
        nodes,
        "strided",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 1, 1])],
        inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    inferred = shapes._with_runtime(model)
    dims = {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in inferred.graph.value_info
    }
    assert dims["c2"][1] == 4
    assert all(isinstance(d, str) for d in (dims["c2"][0], dims["c2"][2], dims["c2"][3])), dims


def test_a_step_that_cannot_apply_is_skipped_with_its_reason() -> None:
    model = cg.tf2onnx_nhwc_conv_bn()
    model.ir_version = 3
    model.graph.input.extend(
        [
            onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
            for i in model.graph.initializer
        ]
    )
    out, report = canonicalize(model)
    entry = _step(report, "initializers_not_inputs")
    assert entry["skipped"] == "IR version 3 < 4 requires initializers to be inputs"
    assert _step(report, "fold_affine")["rewrites"] == 0  # overridable weights are not folded
    _same_outputs(model, out)


def test_graph_view_keeps_order_topological_after_moves() -> None:
    model = cg.gemm_matmul_chains()
    g = Graph(model)
    nodes = g.nodes()
    g.graph.node.insert(0, nodes[-1])  # a consumer listed before its producers
    del g.graph.node[-1]
    g.commit()
    seen = {i.name for i in model.graph.input} | set(g.inits)
    for node in model.graph.node:
        assert all(name in seen for name in node.input)
        seen.update(node.output)


# ----------------------------------------------------------------- real converter output

AFFINE_OPS = ("Mul", "Add", "Sub", "Div", "BatchNormalization")


def convs_before_affine(model: onnx.ModelProto) -> list[str]:
    """Weighted ops whose only reader (past Transposes) is a float affine op with a constant."""
    inits = {i.name for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        users = readers.get(node.output[0], [])
        while len(users) == 1 and users[0].op_type == "Transpose":
            users = readers.get(users[0].output[0], [])
        user = users[0] if len(users) == 1 else None
        affine = user is not None and user.op_type in AFFINE_OPS
        if affine and (user.op_type == "BatchNormalization" or any(i in inits for i in user.input)):
            found.append(node.name)
    return found


@pytest.mark.parametrize("name", ["ppocr-cls", "ppocrv4-rec", "ppocrv4-det"])
def test_paddle2onnx_ppocr_models(name: str) -> None:
    """PP-OCR from the rapidocr-onnxruntime wheel (requirements/ort-nodeps.txt): same outputs on
    real inputs, no conv left before an affine op, every tensor typed (rec needs the runtime
    probe: onnx's inference leaves tensors untyped and the symbolic one fails)."""
    from tests.corpus.onnx_models import MODELS

    corpus = MODELS[name]
    model = onnx.load(str(corpus.path()))
    out, report = canonicalize(model)
    assert convs_before_affine(model)
    assert convs_before_affine(out) == []
    assert all(e["skipped"] is None for e in report), report
    assert shapes._untyped(out) == []
    feeds = corpus.batches("eval", 1)[0]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    got = ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for x, y in zip(ref.run(None, feeds), got.run(None, feeds), strict=True):
        assert float(np.abs(x - y).max()) <= 1e-4 * max(float(np.abs(x).max()), 1e-6)
