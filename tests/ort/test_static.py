"""Static post-training quantization of the digits CNN through ``quantization.fit``."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, load, quantization, scheme
from inc_core.calibration import OBSERVERS
from inc_ort.backend import OrtBackend

from .conftest import fp32_tensor, top1


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def q_params_of(model: onnx.ModelProto, tensor: str) -> tuple[np.ndarray, np.ndarray]:
    node = next(
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor
    )
    return init(model, node.input[1]), init(model, node.input[2])


def weight_dq(model: onnx.ModelProto, weight: str) -> onnx.NodeProto:
    return next(
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].startswith(weight)
    )


def test_default_static_is_qdq_and_keeps_top1(cnn_path, calib, digits, fp32_top1):
    q = quantization.fit(
        str(cnn_path),
        PostTrainingQuantConfig(approach="static", guards=False),  # the plan, not the speed guard
        calib_dataloader=calib,
    )
    counts = op_counts(q.model)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    # conv0 reads one channel (3x3 = 9 products per output): int8 is slower there, not offered
    assert set(q.plan.quantized_ops()) == {"conv1", "conv2", "fc0", "fc1"}
    # every other Conv/Gemm reads int8 weights through a DequantizeLinear
    weights = {i.name: i for i in q.model.graph.initializer}
    for node in q.model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert (node.input[1] in weights) == (node.name == "conv0"), node.name
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_graph_scales_equal_inc_core_scheme(cnn, calib, digits):
    """The numbers onnxruntime's quantizer wrote are the core's reference math, bit for bit."""
    conf = PostTrainingQuantConfig(approach="static", guards=False)  # no op timed back to fp32
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    # conv1's input, on the 100 samples calibration_sampling_size takes by default
    x = fp32_tensor(cnn, "relu0_out", np.concatenate([b[0] for b in calib])[:100])
    expected = scheme.compute_qparams(
        x.min(), x.max(), dtype="uint8", scheme="asym", convention="onnxrt"
    )
    scale, zp = q_params_of(q.model, "relu0_out")
    assert scale.dtype == np.float32 and zp.dtype == np.uint8
    assert scale == np.float32(expected.scale) and zp == expected.zero_point
    for conv in ("conv1", "conv2"):
        w = init(cnn, f"{conv}.weight")
        ref = scheme.weight_qparams(w, granularity="per_channel", axis=0, convention="onnxrt")
        dq = weight_dq(q.model, f"{conv}.weight")
        np.testing.assert_array_equal(init(q.model, dq.input[1]), ref.scale.astype(np.float32))
        np.testing.assert_array_equal(init(q.model, dq.input[2]), ref.zero_point.astype(np.int8))
        np.testing.assert_array_equal(init(q.model, dq.input[0]), scheme.quantize(w, ref))


def test_int8_symmetric_activations_use_the_onnxrt_int8_formula(cnn, calib):
    conf = PostTrainingQuantConfig(
        approach="static",
        op_type_dict={"Conv": {"activation": {"dtype": ["int8"], "scheme": ["sym"]}}},
        guards=False,
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    x = fp32_tensor(cnn, "relu0_out", np.concatenate([b[0] for b in calib])[:100])
    scale, zp = q_params_of(q.model, "relu0_out")
    ref = scheme.compute_qparams(x.min(), x.max(), dtype="int8", scheme="sym", convention="onnxrt")
    assert zp.dtype == np.int8 and zp == 0
    assert scale == np.float32(ref.scale) == np.float32(2 * x.max() / 254)


def test_per_tensor_weights_by_op_type_rule(cnn, calib, digits, fp32_top1):
    conf = PostTrainingQuantConfig(
        approach="static", op_type_dict={"Conv": {"weight": {"granularity": ["per_tensor"]}}}
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    dq = weight_dq(q.model, "conv1.weight")
    assert init(q.model, dq.input[1]).shape == ()
    ref = scheme.weight_qparams(init(cnn, "conv1.weight"), convention="onnxrt")
    assert init(q.model, dq.input[1]) == np.float32(ref.scale)
    assert top1(q.model, digits) >= fp32_top1 * 0.98


def test_qoperator_format_writes_qlinear_ops(cnn, calib, digits, fp32_top1):
    q = quantization.fit(
        cnn,
        PostTrainingQuantConfig(approach="static", quant_format="QOperator", guards=False),
        calib_dataloader=calib,
    )
    counts = op_counts(q.model)
    assert counts["QLinearConv"] == 2 and counts["Conv"] == 1  # conv0 stays fp32
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_op_name_regex_and_op_type_rules_keep_ops_fp32(cnn, calib):
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    # QDQ pinned: the nodes are read by name below, and with the format left open the speed
    # guard may keep its QOperator build (renamed "conv1_quant" kernels)
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_format="QDQ",
        op_name_dict={"conv[2-9]": fp32},
        op_type_dict={"Gemm": fp32},
        guards=False,
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert q.plan.quantized_ops() == ["conv1"]
    floats = {i.name for i in q.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    by_name = {n.name: n for n in q.model.graph.node}
    for name in ("conv2", "fc0", "fc1"):
        assert by_name[name].input[1] in floats, f"{name} should keep its fp32 weight"
    assert by_name["conv1"].input[1] not in floats


def test_unknown_op_type_rule_is_an_error_listing_types(cnn, calib):
    from inc_core.errors import ConfigError

    with pytest.raises(ConfigError, match="Cnv"):
        quantization.fit(
            cnn,
            PostTrainingQuantConfig(op_type_dict={"Cnv": {"weight": {"dtype": ["fp32"]}}}),
            calib_dataloader=calib,
        )


def test_calibration_sampling_size_limits_the_samples(cnn, calib):
    # guards off: the speed guard could time conv2 back to fp32, leaving relu1_out unquantized
    conf = PostTrainingQuantConfig(approach="static", calibration_sampling_size=[50], guards=False)
    limited = quantization.fit(cnn, conf, calib_dataloader=calib)
    unlimited = PostTrainingQuantConfig(approach="static", guards=False)
    first_only = quantization.fit(cnn, unlimited, calib_dataloader=calib[:1])
    full = quantization.fit(cnn, unlimited, calib_dataloader=calib)
    tensor = "relu1_out"
    assert q_params_of(limited.model, tensor)[0] == q_params_of(first_only.model, tensor)[0]
    assert q_params_of(limited.model, tensor)[0] != q_params_of(full.model, tensor)[0]


@pytest.mark.parametrize("algorithm", ["minmax", "kl", "percentile"])
def test_calibration_algorithms_come_from_core_observers(cnn, calib, digits, fp32_top1, algorithm):
    assert algorithm in OBSERVERS
    rule = {"activation": {"algorithm": [algorithm]}}
    conf = PostTrainingQuantConfig(
        approach="static", op_type_dict={"Conv": rule, "Gemm": rule}, guards=False
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    from inc_core.calibration import create_observer

    obs = create_observer(algorithm, dtype="uint8", scheme="asym", convention="onnxrt")
    for batch, _ in calib[:2]:  # the 100 samples of the default calibration_sampling_size
        obs.update(fp32_tensor(cnn, "relu0_out", batch))
    lo, hi = obs.range()
    ref = scheme.compute_qparams(lo, hi, dtype="uint8", scheme="asym", convention="onnxrt")
    assert q_params_of(q.model, "relu0_out")[0] == np.float32(ref.scale)
    assert top1(q.model, digits) >= fp32_top1 * 0.98


def test_calibration_data_reader_is_accepted(cnn, calib, digits, fp32_top1):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": x} for x, _ in calib])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    conf = PostTrainingQuantConfig(approach="static", guards=False)  # no op timed back to fp32
    q = quantization.fit(cnn, conf, calib_dataloader=Reader())
    reference = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert q_params_of(q.model, "relu1_out") == q_params_of(reference.model, "relu1_out")
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_input_file_and_proto_are_never_modified(cnn, cnn_path, calib):
    before = hashlib.sha256(cnn_path.read_bytes()).hexdigest()
    proto_before = cnn.SerializeToString()
    quantization.fit(
        str(cnn_path), PostTrainingQuantConfig(approach="static"), calib_dataloader=calib
    )
    quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    assert hashlib.sha256(cnn_path.read_bytes()).hexdigest() == before
    assert cnn.SerializeToString() == proto_before
    assert sorted(p.name for p in cnn_path.parent.iterdir()) == [cnn_path.name]


def test_output_keeps_opset_and_io_names(cnn, calib):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    opsets = {o.domain: o.version for o in q.model.opset_import}
    assert opsets[""] == 17
    assert [i.name for i in q.model.graph.input] == ["image"]
    assert [o.name for o in q.model.graph.output] == ["logits"]


def test_save_writes_a_model_plain_onnxruntime_loads(cnn, calib, digits, tmp_path):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    q.save(tmp_path / "out")
    assert (tmp_path / "out" / "model.onnx").is_file() and (tmp_path / "out" / "inc.json").is_file()
    sess = ort.InferenceSession(
        str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    direct = sess.run(None, {"image": digits.x_test})[0]
    loaded = load(tmp_path / "out")
    assert isinstance(loaded.model, onnx.ModelProto)
    np.testing.assert_array_equal(OrtBackend().predict(loaded.model, digits.x_test), direct)


def test_external_data_model_in_and_out(cnn, calib, digits, fp32_top1, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copy = onnx.ModelProto()
    copy.CopyFrom(cnn)  # onnx.save_model with external data rewrites the proto it is given
    onnx.save_model(
        copy,
        str(src / "big.onnx"),
        save_as_external_data=True,
        location="big.data",
        size_threshold=0,
    )
    files_before = {p.name: p.read_bytes() for p in src.iterdir()}
    q = quantization.fit(
        str(src / "big.onnx"), PostTrainingQuantConfig(approach="static"), calib_dataloader=calib
    )
    assert top1(q.model, digits) >= fp32_top1 * 0.99
    assert {p.name: p.read_bytes() for p in src.iterdir()} == files_before
    written = OrtBackend().save(q.model, _mkdir(tmp_path / "ext"))
    assert written == ["model.onnx"]  # small: one file
    from inc_ort import model_io

    big = model_io.save(q.model, _mkdir(tmp_path / "forced") / "model.onnx", external=True)
    assert big == ["model.onnx", "model.onnx.data"]
    assert top1(tmp_path / "forced" / "model.onnx", digits) == top1(q.model, digits)


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_backend_evaluate_runs_an_inference_session(cnn, calib, evaluation, digits):
    class Top1:
        def reset(self) -> None:
            self.hits = self.total = 0

        def update(self, pred, label) -> None:
            self.hits += int(np.sum(np.argmax(pred, 1) == label))
            self.total += len(label)

        def result(self) -> float:
            return self.hits / self.total

    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    backend = OrtBackend()
    assert backend.evaluate(q.model, evaluation, Top1()) == pytest.approx(top1(q.model, digits))
    assert backend.latency(q.model, [digits.x_test[:32]] * 3) > 0


def test_opset_11_model_is_quantized_as_an_opset_13_copy_with_per_channel_weights(
    cnn, calib, digits, fp32_top1, caplog
):
    # paddle2onnx writes opset 11/12: per-channel DequantizeLinear (and fp32 rules that hold in
    # onnxruntime) need 13, so inc converts its copy and says so
    old = onnx.ModelProto()
    old.CopyFrom(cnn)
    old.opset_import[0].version = 11  # Conv/Relu/MaxPool/Flatten/Gemm mean the same at 11
    onnx.checker.check_model(old)
    with caplog.at_level("WARNING"):
        q = quantization.fit(
            old, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib
        )
    assert "opset 11" in caplog.text and "opset 13" in caplog.text
    assert old.opset_import[0].version == 11
    assert {o.domain: o.version for o in q.model.opset_import}[""] == 13
    dq = weight_dq(q.model, "conv1.weight")
    assert init(q.model, dq.input[1]).shape == (64,)  # per channel: one scale per output channel
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_backend_pickles_for_process_pools_after_running_sessions(cnn, calib, digits):
    import pickle

    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    backend = OrtBackend()
    before = backend.predict(q.model, digits.x_test[:8])
    clone = pickle.loads(pickle.dumps(backend))
    np.testing.assert_array_equal(clone.predict(q.model, digits.x_test[:8]), before)


def _matmul_add_mlp() -> onnx.ModelProto:
    """MatMul + Add pairs, which onnxruntime fuses into Gemm nodes named "<matmul>/MatMulAddFusion"."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (64, 32)).astype(np.float32), "w0"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b0"),
        numpy_helper.from_array(rng.normal(0, 0.3, (32, 10)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"], name="fc0"),
        helper.make_node("Add", ["m0", "b0"], ["a0"], name="fc0_bias"),
        helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "w1"], ["m1"], name="fc1"),
        helper.make_node("Add", ["m1", "b1"], ["y"], name="fc1_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fused_nodes_keep_the_users_node_names(digits):
    model = _matmul_add_mlp()
    loader = [(digits.x_train[:32].reshape(32, -1), None)]
    conf = PostTrainingQuantConfig(
        approach="static",
        op_name_dict={"fc0": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}},
        guards=False,
    )
    q = quantization.fit(model, conf, calib_dataloader=loader)
    assert set(q.plan.ops) == {"fc0", "fc1"}
    assert q.plan.float_ops() == ["fc0"] and q.plan.quantized_ops() == ["fc1"]


def _without_build_shortcuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """inc's quantizer as onnxruntime's parent class builds by itself: shape inference through a
    saved file, a scan of every node per replaced input, per-channel weights one channel at a
    time (inc's own shortcuts for these must not change one byte)."""
    from contextlib import nullcontext

    from onnxruntime.quantization.onnx_model import ONNXModel

    from inc_ort import quantizer

    monkeypatch.setattr(quantizer, "with_inferred_shapes", lambda model: model)
    monkeypatch.setattr(quantizer, "_in_memory_reload", nullcontext)
    monkeypatch.setattr(quantizer, "IndexedModel", ONNXModel)
    monkeypatch.setattr(quantizer, "_vectorized_weights", nullcontext)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"quant_format": "QOperator"},
        {
            "op_name_dict": {
                "conv1": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
            }
        },
        {"op_type_dict": {"Conv": {"weight": {"granularity": ["per_tensor"]}}}},
        {"approach": "dynamic"},
        {
            "approach": "dynamic",
            "op_type_dict": {"Conv": {"weight": {"granularity": ["per_tensor"]}}},
        },
    ],
    ids=["qdq", "qoperator", "conv1-fp32", "per-tensor", "dynamic", "dynamic-per-tensor"],
)
def test_build_shortcuts_give_the_parents_bytes(cnn, calib, monkeypatch, options):
    conf = PostTrainingQuantConfig(guards=False, **options)
    fast = quantization.fit(cnn, conf, calib_dataloader=calib).model.SerializeToString()
    with monkeypatch.context() as patched:
        _without_build_shortcuts(patched)
        slow = quantization.fit(cnn, conf, calib_dataloader=calib).model.SerializeToString()
    assert hashlib.sha256(fast).hexdigest() == hashlib.sha256(slow).hexdigest()


@pytest.mark.parametrize("approach", ["static", "dynamic"])
def test_build_shortcuts_give_the_parents_bytes_on_minilm(minilm, reviews, monkeypatch, approach):
    from .models import encode

    texts, _ = reviews
    data = [encode(texts[i : i + 16]) for i in (0, 16)]
    conf = PostTrainingQuantConfig(guards=False, approach=approach)
    fast = quantization.fit(minilm, conf, calib_dataloader=data).model.SerializeToString()
    with monkeypatch.context() as patched:
        _without_build_shortcuts(patched)
        slow = quantization.fit(minilm, conf, calib_dataloader=data).model.SerializeToString()
    assert fast == slow
