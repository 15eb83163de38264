"""Rules always give a valid model (issue 12, item 4).

Every op type a model's ``ops()`` lists is set to fp32 in turn through ``op_type_dict``; ``fit``
must return a model onnxruntime loads and runs (outputs of the fp32 shapes, finite), and every op
of that type must be reported fp32 and really run fp32 (``runs_as`` is not an int8 kernel: a
float Add between int8 convs must not become QLinearAdd). Single ops named in ``op_name_dict``
likewise; a rule that cannot hold is a ``ConfigError`` that names it, raised before onnxruntime
sees a graph. Real models: the PP-OCR text-direction classifier (paddle2onnx, in the ort env
through requirements/ort-nodeps.txt), the repo's ResNet-like and digits CNN graphs, and a small
graph with the types the corpus' detector/recogniser add (ConvTranspose, Concat, AveragePool,
MatMul). ``guards=False`` and one small calibration batch keep it quick.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization
from inc_core import backend as registry
from inc_core.errors import ConfigError
from inc_core.model import QuantizedModel
from inc_ort import kernels
from tests.corpus.onnx_models import MODELS

from . import converter_graphs, models

FP32 = {"weight": {"dtype": ["fp32"]}, "activation": {"dtype": ["fp32"]}}
Feeds = dict[str, np.ndarray]


@dataclass
class Case:
    """A model (path or proto), one calibration batch and one evaluation batch."""

    model: str | onnx.ModelProto
    calib: list[Any]
    feed: Feeds


def _random_feed(model: onnx.ModelProto, batch: int, seed: int) -> Feeds:
    rng = np.random.default_rng(seed)
    feed = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else batch for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.normal(0.0, 1.0, dims).astype(np.float32)
    return feed


def _with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Graph outputs typed by shape inference: converter_graphs leaves some untyped (the
    canonicaliser's tests need no more), and onnx.checker refuses a model with such outputs."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    return model


def _synthetic(model: onnx.ModelProto) -> Case:
    model = _with_output_shapes(model)
    return Case(model, [_random_feed(model, 2, 0)], _random_feed(model, 3, 1))


@functools.cache
def _ppocr_cls() -> Case:
    corpus = MODELS["ppocr-cls"]
    calib = [{k: v[:2] for k, v in b.items()} for b in corpus.batches("calib", 1)]
    feed = {k: v[:3] for k, v in corpus.batches("eval", 1)[0].items()}
    return Case(str(corpus.path()), calib, feed)


def unet_like(seed: int = 0) -> onnx.ModelProto:
    """Conv, strided Conv, ConvTranspose back up, Concat with the skip, AveragePool, a MatMul head:
    the op types of PP-OCR det/rec (DB's upsampling FPN, the recogniser's pooled MatMul head) in a
    graph small enough to fit in a fraction of a second."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
        value = rng.normal(0.0, (2.0 / fan_in) ** 0.5, shape).astype(np.float32)
        inits.append(numpy_helper.from_array(value, name))
        return name

    k3 = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", w("c0.w", (8, 3, 3, 3))], ["c0"], name="stem", **k3),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", w("c1.w", (8, 8, 3, 3))], ["c1"], name="down",
                         strides=[2, 2], **k3),
        helper.make_node("Relu", ["c1"], ["r1"], name="down_relu"),
        helper.make_node("ConvTranspose", ["r1", w("up.w", (8, 8, 2, 2))], ["u"], name="up",
                         strides=[2, 2]),
        helper.make_node("Relu", ["u"], ["ru"], name="up_relu"),
        helper.make_node("Concat", ["r0", "ru"], ["cat"], name="fuse", axis=1),
        helper.make_node("Conv", ["cat", w("c2.w", (8, 16, 3, 3))], ["c2"], name="head", **k3),
        helper.make_node("Relu", ["c2"], ["r2"], name="head_relu"),
        helper.make_node("AveragePool", ["r2"], ["p"], name="pool", kernel_shape=[4, 4],
                         strides=[4, 4]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("MatMul", ["f", w("fc.w", (128, 10))], ["logits"], name="fc"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "unet_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


CASES: dict[str, Callable[[], Case]] = {
    "ppocr-cls": _ppocr_cls,
    "resnet-like": lambda: _synthetic(models.resnet_like()),
    "unet-like": lambda: _synthetic(unet_like()),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


def _ops(model: str | onnx.ModelProto) -> dict[str, str]:
    if isinstance(model, str):
        return _ops_of_file(model)
    return _ops_of_proto(model)


@functools.cache
def _ops_of_file(model: str) -> dict[str, str]:
    return _ops_of_proto(model)


def _ops_of_proto(model: str | onnx.ModelProto) -> dict[str, str]:
    backend = registry.by_name("onnxrt")
    loaded = backend.load_model(model, PostTrainingQuantConfig())
    return {op.name: op.type for op in backend.ops(loaded)}


def _run(model: str | onnx.ModelProto, feed: Feeds) -> list[np.ndarray]:
    source = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in sess.run(None, feed)]


def _fit(case: Case, **conf: Any) -> QuantizedModel:
    """``fit`` with guards off; any error but a ConfigError is the bug this file looks for."""
    conf.setdefault("approach", "static")
    try:
        return quantization.fit(
            case.model, PostTrainingQuantConfig(guards=False, **conf), calib_dataloader=case.calib
        )
    except ConfigError:
        raise
    except Exception as exc:
        pytest.fail(f"fit with {conf} raised {type(exc).__name__}, not a ConfigError: {exc}")


def _problems(case: Case, q: QuantizedModel, fp32_ops: set[str]) -> list[str]:
    """What is wrong with ``q``: it does not load or run like the fp32 model, or an op of
    ``fp32_ops`` is reported or run in int8."""
    found = []
    reference = _run(case.model, case.feed)
    try:
        outputs = _run(q.model, case.feed)
    except Exception as exc:  # onnxruntime's own error: the model is invalid
        return [f"onnxruntime cannot run the model: {type(exc).__name__}: {exc}"]
    for index, (ref, out) in enumerate(zip(reference, outputs, strict=True)):
        if ref.shape != out.shape:
            found.append(f"output {index} has shape {out.shape}, fp32 {ref.shape}")
        elif not np.all(np.isfinite(out)):
            found.append(f"output {index} is not finite")
    runs = registry.by_name("onnxrt").runs_as(q.model)  # not through the report: errors show
    rows = {row["op"]: row for row in q.op_report()}
    for op in sorted(fp32_ops):
        row = rows[op]
        if row["activation"] != "fp32" or row["weight"] != "fp32":
            found.append(f"{op} is reported {row['activation']}/{row['weight']}, asked fp32")
        for label in sorted({runs.get(op, ""), row["runs_as"]}):
            if kernels.is_int8(label):
                found.append(f"{op} was asked fp32 but runs as {label}")
    return found


def test_each_op_type_set_to_fp32_gives_a_valid_model_that_runs_it_in_fp32(case: Case) -> None:
    ops = _ops(case.model)
    types = sorted(set(ops.values()))
    assert len(types) >= 2, f"the sweep needs a model with several op types, got {types}"
    failures: dict[str, list[str]] = {}
    for op_type in types:
        q = _fit(case, op_type_dict={op_type: FP32})
        of_type = {name for name, t in q.plan.op_types.items() if t == op_type}
        assert of_type, f"no {op_type} op in the plan; ops() listed {ops}"
        problems = _problems(case, q, of_type)
        if problems:
            failures[op_type] = problems
    assert failures == {}


def _weighted(ops: dict[str, str]) -> list[str]:
    return [name for name, t in ops.items() if t in ("Conv", "ConvTranspose", "MatMul", "Gemm")]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_weighted_op_named_fp32_runs_fp32_and_the_model_runs(where: str) -> None:
    case = _ppocr_cls()
    weighted = _weighted(_ops(case.model))
    name = {"first": weighted[0], "middle": weighted[len(weighted) // 2], "last": weighted[-1]}
    q = _fit(case, op_name_dict={name[where]: FP32})
    assert _problems(case, q, {name[where]}) == []
    assert len(q.plan.quantized_ops()) >= len(weighted) - 1, "one rule turned off other ops"


@pytest.mark.parametrize("key", [r"conv_that_is_not_there\d+", "no_such_op"])
def test_an_op_name_rule_matching_no_op_is_a_config_error_naming_it(key: str) -> None:
    case = _synthetic(models.resnet_like())
    with pytest.raises(ConfigError, match=r"op_name_dict key .* matches no op") as err:
        _fit(case, op_name_dict={key: FP32})
    assert repr(key) in str(err.value)
    assert "stem" in str(err.value) or "layer" in str(err.value), "it lists op names to pick"


def test_a_dynamic_rule_on_an_op_type_that_cannot_be_dynamic_is_a_config_error() -> None:
    case = _synthetic(models.resnet_like())
    rule = {"Conv": {"activation": {"dtype": ["uint8"]}}}
    with pytest.raises(ConfigError, match=r"\(Conv\).*dynamic.*fp32"):
        _fit(case, approach="dynamic", op_type_dict=rule)
    with pytest.raises(ConfigError, match=r"'stem' \(Conv\).*dynamic"):
        _fit(case, approach="dynamic", op_name_dict={"stem": rule["Conv"]})


def test_a_dynamic_activation_dtype_the_runtime_lacks_is_a_config_error_listing_it() -> None:
    case = _synthetic(models.resnet_like())
    rule = {"Gemm": {"activation": {"dtype": ["int8"]}}}
    with pytest.raises(ConfigError, match=r"'fc' \(Gemm\).*\['int8'\].*allows \['uint8'\]"):
        _fit(case, approach="dynamic", op_type_dict=rule)


def test_rules_that_keep_every_op_fp32_are_a_config_error_naming_the_rule() -> None:
    case = _synthetic(converter_graphs.paddle_conv_scale_bias())
    with pytest.raises(ConfigError, match="op_type_dict"):
        _fit(case, op_type_dict={"Conv": FP32})


MIXED_RULES = {
    "int8 sym residual adds": {"Add": {"activation": {"dtype": ["int8"], "scheme": ["sym"]}}},
    "int8 convs": {"Conv": {"activation": {"dtype": ["int8"]}}},
    "int8 pool": {"GlobalAveragePool": {"activation": {"dtype": ["int8"]}}},
    "per-tensor fc": {"Gemm": {"weight": {"granularity": ["per_tensor"]}}},
}


@pytest.mark.parametrize("quant_format", ["QDQ", "QOperator"])
@pytest.mark.parametrize("rule", list(MIXED_RULES))
def test_rules_mixing_dtypes_and_granularities_give_a_model_that_runs(
    rule: str, quant_format: str
) -> None:
    # QOperator's QLinearAdd of a uint8 and an int8 tensor did not load in onnxruntime
    case = _synthetic(models.resnet_like())
    q = _fit(case, quant_format=quant_format, op_type_dict=MIXED_RULES[rule])
    assert _problems(case, q, set()) == []
