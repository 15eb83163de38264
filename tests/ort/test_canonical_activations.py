"""inc_ort.canonical.patterns.hard_activations: decomposed hard-swish / hard-sigmoid in the
shapes paddle2onnx and torch exporters write become ONNX HardSwish / HardSigmoid. Checked with
onnxruntime on random inputs (outputs equal to 1e-5 relative) and by the ops and names left."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_ort.canonical import canonicalize

F = TensorProto.FLOAT
SHAPE = [2, 8, 6, 6]


def _k(name: str, value: float, shape: tuple[int, ...] = ()) -> TensorProto:
    return numpy_helper.from_array(np.full(shape, value, np.float32), name)


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], opset: int) -> onnx.ModelProto:
    """``x -> Conv -> <nodes: conv:0 -> act:0> -> Conv -> y``, as a converter writes it."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 8, 1, 1)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (8, 8, 1, 1)).astype(np.float32), "w1")
    body = [
        helper.make_node("Conv", ["x", "w0"], ["conv:0"], name="conv0"),
        *nodes,
        helper.make_node("Conv", ["act:0", "w1"], ["y"], name="conv1"),
    ]
    graph = helper.make_graph(
        body, "g", [helper.make_tensor_value_info("x", F, SHAPE)],
        [helper.make_tensor_value_info("y", F, SHAPE)], [w, w1, *inits],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _clip(x: str, out: str, lo: float, hi: float, opset: int, name: str) -> onnx.NodeProto:
    if opset < 11:  # bounds were attributes before opset 11
        return helper.make_node("Clip", [x], [out], name=name, min=lo, max=hi)
    return helper.make_node("Clip", [x, f"{name}_lo", f"{name}_hi"], [out], name=name)


def _clip_inits(name: str, lo: float, hi: float, opset: int) -> list[TensorProto]:
    return [] if opset < 11 else [_k(f"{name}_lo", lo), _k(f"{name}_hi", hi)]


def paddle_hard_swish(opset: int = 11, div: bool = True) -> onnx.ModelProto:
    """paddle2onnx's hard_swish (PP-OCR cls): Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)."""
    nodes = [
        helper.make_node("Add", ["conv:0", "three"], ["Add@0"], name="Add@0"),
        _clip("Add@0", "Clip@0", 0.0, 6.0, opset, "Clip@0"),
        helper.make_node("Mul", ["conv:0", "Clip@0"], ["Mul@0"], name="Mul@0"),
        helper.make_node("Div" if div else "Mul", ["Mul@0", "six"], ["act:0"], name="Div@0"),
    ]
    inits = [_k("three", 3.0, (1,)), _k("six", 6.0 if div else 1 / 6, (1,))]
    return _model(nodes, inits + _clip_inits("Clip@0", 0.0, 6.0, opset), opset)


def torch_hard_swish(opset: int = 13) -> onnx.ModelProto:
    """torch.onnx before HardSwish existed: x * (relu6(x + 3) / 6), Mul(x) last."""
    nodes = [
        helper.make_node("Add", ["conv:0", "three"], ["a"], name="/act/Add"),
        _clip("a", "c", 0.0, 6.0, opset, "/act/Clip"),
        helper.make_node("Div", ["c", "six"], ["d"], name="/act/Div"),
        helper.make_node("Mul", ["conv:0", "d"], ["act:0"], name="/act/Mul"),
    ]
    inits = [_k("three", 3.0), _k("six", 6.0), *_clip_inits("/act/Clip", 0.0, 6.0, opset)]
    return _model(nodes, inits, opset)


def hard_sigmoid_gate(opset: int = 13) -> onnx.ModelProto:
    """A squeeze-excite gate: relu6(s + 3) / 6 of the pooled conv:0 scales conv:0, so it is a
    HardSigmoid (after a Conv the +3 would fold into its bias first)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["conv:0"], ["s"], name="se_pool"),
        helper.make_node("Add", ["s", "three"], ["a"], name="gate_add"),
        _clip("a", "c", 0.0, 6.0, opset, "gate_clip"),
        helper.make_node("Div", ["c", "six"], ["gate"], name="gate_div"),
        helper.make_node("Mul", ["conv:0", "gate"], ["act:0"], name="se_mul"),
    ]
    inits = [_k("three", 3.0), _k("six", 6.0), *_clip_inits("gate_clip", 0.0, 6.0, opset)]
    return _model(nodes, inits, opset)


def slope_offset_hard_sigmoid(opset: int = 13) -> onnx.ModelProto:
    """Clip(x * 0.2 + 0.5, 0, 1) (paddle's hard_sigmoid slope/offset), then x * it."""
    nodes = [
        helper.make_node("Mul", ["conv:0", "slope"], ["m"], name="hs_mul"),
        helper.make_node("Add", ["m", "offset"], ["a"], name="hs_add"),
        _clip("a", "gate", 0.0, 1.0, opset, "hs_clip"),
        helper.make_node("Mul", ["conv:0", "gate"], ["act:0"], name="gate_mul"),
    ]
    inits = [_k("slope", 0.2), _k("offset", 0.5), *_clip_inits("hs_clip", 0.0, 1.0, opset)]
    return _model(nodes, inits, opset)


def _apply(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """canonicalize on a copy, and the nodes its hard_activations step rewrote."""
    work, report = canonicalize(model)
    (entry,) = [e for e in report if e["step"] == "hard_activations"]
    assert entry["skipped"] is None, entry
    onnx.checker.check_model(work)
    return work, entry["nodes"]


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    # scaled so that values cross the kinks at -3 and 3 of the hard-swish
    x = np.random.default_rng(1).normal(0, 3, SHAPE).astype(np.float32)
    ref, got = _run(a, x), _run(b, x)
    assert ref.shape == got.shape
    assert float(np.abs(ref - got).max()) <= 1e-5 * float(np.abs(ref).max())


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


@pytest.mark.parametrize("opset", [10, 11, 13])
def test_paddle_hard_swish_below_opset_14_becomes_hard_sigmoid_and_mul(opset: int) -> None:
    model = paddle_hard_swish(opset)
    out, done = _apply(model)
    assert done == ["Add@0"]
    assert _ops(out) == Counter({"Conv": 2, "HardSigmoid": 1, "Mul": 1})
    hsig, mul = _node(out, "HardSigmoid"), _node(out, "Mul")
    assert hsig.name == "Add@0" and mul.name == "Mul@0"  # the user's names stay
    assert mul.output[0] == "act:0" and sorted(mul.input) == sorted(["conv:0", hsig.output[0]])
    alpha = next(a.f for a in hsig.attribute if a.name == "alpha")
    assert alpha == pytest.approx(1 / 6)
    _same_outputs(model, out)


@pytest.mark.parametrize("div", [True, False])
def test_paddle_hard_swish_at_opset_14_becomes_hard_swish(div: bool) -> None:
    model = paddle_hard_swish(14, div=div)
    out, done = _apply(model)
    assert done == ["Add@0"]
    assert _ops(out) == Counter({"Conv": 2, "HardSwish": 1})
    node = _node(out, "HardSwish")
    assert (node.name, list(node.input), list(node.output)) == ("Add@0", ["conv:0"], ["act:0"])
    _same_outputs(model, out)


@pytest.mark.parametrize("opset", [13, 17])
def test_torch_relu6_hard_swish(opset: int) -> None:
    model = torch_hard_swish(opset)
    out, done = _apply(model)
    assert done == ["/act/Add"]
    want = {"HardSwish": 1} if opset >= 14 else {"HardSigmoid": 1, "Mul": 1}
    assert _ops(out) == Counter({"Conv": 2, **want})
    _same_outputs(model, out)


def test_gate_of_another_tensor_becomes_hard_sigmoid() -> None:
    model = hard_sigmoid_gate()
    out, done = _apply(model)
    assert done == ["gate_add"]
    assert _ops(out) == Counter({"Conv": 2, "GlobalAveragePool": 1, "HardSigmoid": 1, "Mul": 1})
    hsig = _node(out, "HardSigmoid")
    assert hsig.name == "gate_add" and list(hsig.output) == ["gate"]
    _same_outputs(model, out)


@pytest.mark.parametrize("opset", [13, 14])
def test_slope_offset_hard_sigmoid(opset: int) -> None:
    model = slope_offset_hard_sigmoid(opset)
    out, done = _apply(model)
    assert done == ["hs_mul"]
    hsig = _node(out, "HardSigmoid")
    a = {x.name: x.f for x in hsig.attribute}
    assert a == {"alpha": pytest.approx(0.2), "beta": pytest.approx(0.5)}
    assert _ops(out)["Mul"] == 1  # x * HardSigmoid(0.2, 0.5) is no HardSwish
    _same_outputs(model, out)


def test_hard_sigmoid_times_x_becomes_hard_swish_from_opset_14() -> None:
    nodes = [
        helper.make_node("HardSigmoid", ["conv:0"], ["g"], name="hsig", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["conv:0", "g"], ["act:0"], name="mul"),
    ]
    for opset, want in ((13, {"HardSigmoid": 1, "Mul": 1}), (14, {"HardSwish": 1})):
        model = _model(nodes, [], opset)
        out, _ = _apply(model)
        assert _ops(out) == Counter({"Conv": 2, **want})
        _same_outputs(model, out)


def _edit(model: onnx.ModelProto, name: str, value: float) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        if init.name == name:
            dims = tuple(init.dims)
            out.graph.initializer[i].CopyFrom(_k(name, value, dims))
    return out


def test_lookalikes_stay() -> None:
    """Other constants, a second reader of an inner tensor, a broadcasting constant: no rewrite."""
    base = paddle_hard_swish(13)
    cases = {
        "add 2": _edit(base, "three", 2.0),
        "div 5": _edit(base, "six", 5.0),
        "clip 0..5": _edit(base, "Clip@0_hi", 5.0),
    }
    read_twice = onnx.ModelProto()
    read_twice.CopyFrom(base)
    read_twice.graph.output.append(helper.make_tensor_value_info("Clip@0", F, SHAPE))
    cases["clip output read outside"] = read_twice
    wide = onnx.ModelProto()
    wide.CopyFrom(base)
    wide.graph.initializer.append(_k("three5", 3.0, (1, 1, 1, 1, 1)))  # broadcasts to rank 5
    next(n for n in wide.graph.node if n.name == "Add@0").input[1] = "three5"
    del wide.graph.output[:]
    wide.graph.output.append(helper.make_tensor_value_info("y", F, [1, *SHAPE]))
    cases["rank-5 constant"] = wide
    for case, model in cases.items():
        out, done = _apply(model)
        assert done == [], case
        assert _ops(out)["Clip"] == 1, case


def test_input_model_is_not_touched() -> None:
    model = paddle_hard_swish(13)
    before = model.SerializeToString()
    _apply(model)
    assert model.SerializeToString() == before


def test_paddle2onnx_ppocr_cls_hard_swish() -> None:
    """PP-OCR's text-line classifier (MobileNetV3, rapidocr-onnxruntime wheel): its 18 decomposed
    hard_swish become HardSigmoid + Mul (opset 11), outputs equal on real inputs."""
    from tests.corpus.onnx_models import MODELS

    corpus = MODELS["ppocr-cls"]
    model = onnx.load(str(corpus.path()))
    assert _ops(model)["Clip"] == 18
    out, done = _apply(model)
    assert len(done) == 18
    assert _ops(out)["Clip"] == 0 and _ops(out)["Div"] == 0
    assert _ops(out)["HardSigmoid"] == 27  # 18 gates + the 9 SE HardSigmoids it had
    names = {n.name for n in out.graph.node}
    assert {"Add@0", "Mul@0"} <= names
    feeds = corpus.batches("eval", 1)[0]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref, got = (
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for m in (model, out)
    )
    for x, y in zip(ref.run(None, feeds), got.run(None, feeds), strict=True):
        assert float(np.abs(x - y).max()) <= 1e-5 * max(float(np.abs(x).max()), 1e-6)
