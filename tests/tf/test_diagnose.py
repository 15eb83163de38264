"""The guards' hooks on TFLite int8 models: per-op outputs (fp32 vs int8), what runs, latency.

Also the fallback contract the guards rely on: an op the plan keeps in fp32 runs in fp32 even
between two int8 ops (the TFLite converter would otherwise quantize it).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.fidelity import sqnr_db
from inc_core.space import OpQuant, QuantPlan
from inc_tf.backend import TfBackend

#: a modest floor for one int8 op's output against fp32 on these small trained models
#: (measured 31-45 dB; 8-bit rounding of a well-calibrated tensor gives about 40)
MIN_SQNR_DB = 20.0
FP32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}


def plan_for(backend: TfBackend, model, float_ops: tuple[str, ...] = ()) -> QuantPlan:
    """The capability's default scheme for every op, ``float_ops`` in fp32."""
    caps = backend.capability("static", "cpu")
    ops, types = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the encoder's float layers
        listed = backend.ops(model)
    for op in listed:
        types[op.name] = op.type
        cap = caps[op.type]
        ops[op.name] = (
            OpQuant.float()
            if op.name in float_ops
            else OpQuant(
                "static",
                cap.activation.default(),
                cap.weight.default() if cap.weight is not None else None,
            )
        )
    return QuantPlan(ops=ops, op_types=types)


def build(model, x: np.ndarray, float_ops: tuple[str, ...] = ()):
    backend = TfBackend()
    plan = plan_for(backend, model, float_ops)
    ranges = backend.calibrate(model, [x[i : i + 50] for i in range(0, 200, 50)], plan)
    return backend, plan, backend.quantize(model, plan, ranges)


CASES = {
    "cnn": ("cnn", False, ("conv2",)),  # conv2 between an int8 depthwise and an int8 pool/fc1
    "bn_cnn": ("bn_cnn", False, ("dw",)),  # folded Conv -> BN -> ReLU blocks
    "mlp": ("mlp", False, ("dense2",)),  # dense2 between int8 dense1 and the int8 residual Add
    "encoder": ("encoder", True, ("ffn2",)),  # 3-D Dense, float attention and layer norm
}


@pytest.fixture(scope="module")
def encoder(digits):
    from .conftest import digits_encoder, trained

    return trained("digits_encoder", digits_encoder, digits.x_train[..., 0], digits.y_train, 8)


@pytest.fixture(params=list(CASES))
def case(request, digits):
    fixture, rows, fallback = CASES[request.param]
    model = request.getfixturevalue(fixture)
    x = digits.x_train[..., 0] if rows else digits.x_train
    test = digits.x_test[..., 0] if rows else digits.x_test
    return model, x, test[:32], fallback


def test_op_outputs_name_the_ops_with_equal_shapes_and_int8_is_close(case):
    model, x, batch, _ = case
    backend, plan, q = build(model, x)
    names = list(plan.ops)
    fp32 = backend.op_outputs(model, batch, names)
    int8 = backend.op_outputs(q, batch, names)
    assert set(fp32) == set(names)
    assert set(int8) == set(names), "every op of these models has its own TFLite tensor"
    for name in names:
        assert fp32[name].dtype == np.float32 and int8[name].dtype == np.float32
        assert fp32[name].shape == int8[name].shape, name
        assert fp32[name].shape[0] == len(batch)
        assert sqnr_db(fp32[name], int8[name]) >= MIN_SQNR_DB, name


def test_runs_as_names_int8_kernels_and_fp32_fallback_between_int8_ops(case):
    model, x, batch, fallback = case
    backend, plan, q = build(model, x, fallback)
    runs = backend.runs_as(q)
    assert set(runs) == set(plan.ops)
    for name, op in plan.ops.items():
        want = "int8" if op.quantized else "fp32"
        assert runs[name].endswith(f" ({want})"), (name, runs[name])
        kernel = runs[name].split(" ")[0]
        assert kernel in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"), runs[name]
    # the fallback op's output is its fp32 computation on int8 neighbours' values: close to fp32
    out = backend.op_outputs(q, batch, list(fallback))
    ref = backend.op_outputs(model, batch, list(fallback))
    assert sqnr_db(ref[fallback[0]], out[fallback[0]]) >= MIN_SQNR_DB


def test_fallback_between_int8_ops_keeps_the_model_right(cnn, digits):
    _, _, q = build(cnn, digits.x_train, ("conv2",))
    ref = np.asarray(cnn(digits.x_test, training=False)).argmax(-1)
    assert np.mean(q(digits.x_test).argmax(-1) == ref) >= 0.97


def test_op_outputs_leave_out_unknown_names(cnn, digits):
    backend, _, q = build(cnn, digits.x_train)
    assert backend.op_outputs(q, digits.x_test[:4], ["no_such_layer"]) == {}
    assert backend.op_outputs(cnn, digits.x_test[:4], ["no_such_layer"]) == {}
    assert backend.runs_as(cnn) == {}  # a Keras model runs no TFLite kernels


def test_latency_of_fp32_and_int8_is_measured_per_batch(cnn, digits):
    backend, _, q = build(cnn, digits.x_train)
    batches = [digits.x_test[:16]] * 3
    assert backend.latency(cnn, batches) > 0
    assert backend.latency(q, batches) > 0


def test_fp32_latency_traces_each_model_once_and_forgets_it_with_the_model(digits):
    """The speed guard times fp32 in every round: one tf.function per model, traced once."""
    import gc

    import keras

    from inc_tf import backend as tf_backend

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    backend, batches = TfBackend(), [digits.x_test[:16]]
    for _ in range(3):
        assert backend.latency(model, batches) > 0
    assert tf_backend._SERVING[model].experimental_get_tracing_count() == 1
    before = len(tf_backend._SERVING)
    del model
    gc.collect()
    assert len(tf_backend._SERVING) == before - 1


def test_fit_op_report_says_what_ran(cnn, digits):
    # guards=False: the diagnosis is still made, and no timing decides which ops stay int8
    conf = PostTrainingQuantConfig(op_name_dict={"conv2": FP32}, guards=False)
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib())
    rows = {row["op"]: row for row in q.op_report()}
    assert rows["conv2"]["runs_as"] == "CONV_2D (fp32)" and rows["conv2"]["sqnr_db"] is None
    quantized = [r for r in rows.values() if r["op"] in q.plan.quantized_ops()]
    assert quantized
    for row in quantized:
        assert row["runs_as"].endswith("(int8)"), row
        assert row["sqnr_db"] is not None and row["sqnr_db"] >= MIN_SQNR_DB, row


def test_dense_with_softmax_is_planned_fp32_as_tflite_runs_it(digits):
    """TFLite fuses only linear/relu/relu6 into an int8 kernel; with softmax the converter
    keeps the fully connected in float, so the plan says fp32 and runs_as agrees."""
    import keras

    head = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ]
    )
    conf = PostTrainingQuantConfig(guards=False)
    q = quantization.fit(head, conf, calib_dataloader=digits.calib(samples=100))
    assert q.plan.float_ops() == ["probs"]
    rows = {row["op"]: row["runs_as"] for row in q.op_report()}
    assert rows == {
        "conv": "CONV_2D (int8)",
        "hidden": "FULLY_CONNECTED (int8)",
        "probs": "FULLY_CONNECTED (fp32)",
    }
