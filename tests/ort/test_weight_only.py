"""Weight-only quantization on ONNX Runtime: MatMul -> com.microsoft::MatMulNBits.

The reference is inc-core's own dequantized weight: onnxruntime's kernel, fed inc's packing,
must compute ``x @ dequantize(q)`` (fp32 accumulation, so to 1e-4 relative)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig
from inc_core.errors import ConfigError
from inc_core.weight_only import WeightOnlyScheme, dequantize, rtn
from inc_ort.matmulnbits import pack_values
from inc_ort.weight_only import chooser_from_config, quantize_model

#: (K, N) of the MLP's three MatMuls: 100 and 200 are no multiple of 32, 64 or 128 (padding)
SHAPES = ((64, 200), (200, 100), (100, 256))
NAMES = ("fc0", "fc1", "fc2")


def mlp(seed: int = 0) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """x -> (MatMul + bias -> Relu) x2 -> MatMul + bias, weights from numpy."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for s in SHAPES]
    biases = [rng.standard_normal(s[1]).astype(np.float32) * 0.1 for s in SHAPES]
    nodes, inits, x = [], [], "x"
    for i, (name, w, b) in enumerate(zip(NAMES, weights, biases, strict=True)):
        inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        nodes.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=name))
        out = "y" if i == len(NAMES) - 1 else f"{name}.add"
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [out]))
        if i < len(NAMES) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"]))
            x = f"{name}.relu"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, SHAPES[0][0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, SHAPES[-1][1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, weights, biases


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def reference(
    x: np.ndarray, weights: list[np.ndarray], biases: list[np.ndarray], schemes: list[Any]
) -> np.ndarray:
    """The MLP in float64 with each quantized weight replaced by inc-core's dequantized one."""
    h = x.astype(np.float64)
    for i, (w, b, s) in enumerate(zip(weights, biases, schemes, strict=True)):
        used = w if s is None else dequantize(rtn(w, s.bits, s.group_size, s.scheme))
        h = h @ used.astype(np.float64) + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err < 1e-4, f"relative error {err:.2e}"


X = np.random.default_rng(1).standard_normal((5, SHAPES[0][0])).astype(np.float32)


@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_4bit_matmulnbits_computes_inc_cores_dequantized_weights(scheme, group_size):
    model, weights, biases = mlp()
    setting = WeightOnlyScheme(4, group_size, scheme, "RTN")
    q, replaced = quantize_model(model, lambda _name: setting)
    onnx.checker.check_model(q)
    counts = Counter(n.op_type for n in q.graph.node)
    assert counts["MatMulNBits"] == 3 and counts["MatMul"] == 0
    for node in q.graph.node:
        if node.op_type == "MatMulNBits":
            # sym writes no zero point: the kernel's default 8 is inc's sym zero point
            assert len(node.input) == (3 if scheme == "sym" else 4)
    assert {r.block_size for r in replaced} == (
        {group_size} if group_size != -1 else {64, 256, 128}
    )
    assert {r.node for r in replaced} == set(NAMES)
    # fp32 weights are gone: int4 is about an eighth of their bytes plus scales
    names = {i.name for i in q.graph.initializer}
    assert not names & {f"{n}.w" for n in NAMES}
    assert_close(run(q, X), reference(X, weights, biases, [setting] * 3))


@pytest.mark.parametrize("bits", [2, 8])
def test_other_kernel_bits(bits):
    model, weights, biases = mlp()
    setting = WeightOnlyScheme(bits, 32, "asym", "RTN")
    q, _ = quantize_model(model, lambda _name: setting)
    assert_close(run(q, X), reference(X, weights, biases, [setting] * 3))


def test_8bit_sym_relies_on_the_kernels_default_zero_point():
    model, weights, biases = mlp()
    setting = WeightOnlyScheme(8, 64, "sym", "RTN")
    q, _ = quantize_model(model, lambda _name: setting)
    assert all(len(n.input) == 3 for n in q.graph.node if n.op_type == "MatMulNBits")
    assert_close(run(q, X), reference(X, weights, biases, [setting] * 3))


def test_quantized_output_is_near_fp32():
    """int4 g32 moves the output by little next to its scale (the packing is not garbage
    that happens to match a garbage reference)."""
    model, *_ = mlp()
    q, _ = quantize_model(model, lambda _name: WeightOnlyScheme(4, 32, "asym", "RTN"))
    fp32, int4 = run(model, X), run(q, X)
    assert np.abs(int4 - fp32).max() / np.abs(fp32).max() < 0.15
    assert not np.allclose(int4, fp32, rtol=1e-6, atol=1e-6)


def test_config_rules_keep_a_matmul_fp32_and_leave_the_users_model_untouched():
    model, weights, biases = mlp()
    before = model.SerializeToString()
    conf = PostTrainingQuantConfig(
        approach="weight_only",
        op_type_dict={
            ".*": {"weight": {"bits": 4, "group_size": 32, "scheme": "sym", "algorithm": "RTN"}}
        },
        op_name_dict={"fc2": {"weight": {"dtype": "fp32"}}},
    )
    q, replaced = quantize_model(model, chooser_from_config(conf))
    assert model.SerializeToString() == before
    assert [r.node for r in replaced] == ["fc0", "fc1"]
    kept = [n for n in q.graph.node if n.op_type == "MatMul"]
    assert [n.name for n in kept] == ["fc2"] and kept[0].input[1] == "fc2.w"
    setting = WeightOnlyScheme(4, 32, "sym", "RTN")
    assert_close(run(q, X), reference(X, weights, biases, [setting, setting, None]))


def test_a_shared_weight_is_quantized_once_and_a_graph_input_weight_is_left_alone():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
            helper.make_node("MatMul", ["h", "w"], ["h2"], name="b"),
            helper.make_node("MatMul", ["h2", "v"], ["y"], name="c"),
        ],
        "shared",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64]),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [64, 64]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w, "v")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q, replaced = quantize_model(model, lambda _name: WeightOnlyScheme(4, 32, "sym", "RTN"))
    assert [r.node for r in replaced] == ["a", "b"]
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert nbits[0].input[1:] == nbits[1].input[1:]
    assert len(q.graph.initializer) == 3  # packed B, scales, and v (a graph input's default)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (WeightOnlyScheme(4, 24, "sym", "RTN"), r"group_size=24 .*power of two from 16"),
        (WeightOnlyScheme(4, 8, "sym", "RTN"), r"group_size=8 .*allowed: 16, 32, 64"),
        (WeightOnlyScheme(3, 32, "sym", "RTN"), r"bits=3 .*allowed for backend 'onnxrt': 2, 4, 8"),
        (WeightOnlyScheme(4, 32, "sym", "GPTQ"), r"'GPTQ' \(op 'fc0'\) reads calibration"),
        (WeightOnlyScheme(4, 32, "sym", "AWQ"), r"'AWQ' \(op 'fc0'\) reads calibration"),
    ],
)
def test_settings_without_a_kernel_are_config_errors_and_change_nothing(setting, message):
    model, *_ = mlp()
    before = model.SerializeToString()
    with pytest.raises(ConfigError, match=message):
        quantize_model(model, lambda _name: setting, copy=False)
    assert model.SerializeToString() == before


def test_pack_values_puts_earlier_values_in_the_low_bits():
    values = np.array([[1, 2, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(pack_values(values, 4), [[0x21, 0x03]])
    np.testing.assert_array_equal(pack_values(values, 2), [[0b111001]])
    np.testing.assert_array_equal(pack_values(values, 8), values)
