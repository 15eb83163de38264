"""Post-training static quantization of Keras 3 models to full-integer TFLite models."""

from __future__ import annotations

import threading
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from inc_core import PostTrainingQuantConfig, load, quantization, scheme
from inc_core import backend as registry
from inc_core.errors import ConfigError, DataError, DeviceNotAvailable, ModelError
from inc_tf.runtime import TfLiteModel

from .conftest import same_weights, weights_of

FP32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}


def static(**kw) -> PostTrainingQuantConfig:
    # these tests check planning and kernels; the speed guard (held to the contract by
    # tests/conformance) could time an op back to fp32 on a loaded machine
    kw.setdefault("guards", False)
    return PostTrainingQuantConfig(approach="static", **kw)


def op_dtypes(q_model: TfLiteModel) -> dict[str, str]:
    """Output tensor dtype of each conv / fully connected op, keyed by the Keras layer name."""
    interp = q_model._interpreter()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found = {}
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"):
            out = tensors[op["outputs"][0]]
            found[out["name"]] = (op["op_name"], out["dtype"].__name__)
    return found


@pytest.fixture(scope="module")
def q_cnn(cnn, digits):
    return quantization.fit(cnn, static(), calib_dataloader=digits.calib())


def test_cnn_runs_full_integer_and_keeps_accuracy(cnn, digits, q_cnn):
    assert isinstance(q_cnn.model, TfLiteModel)
    names = q_cnn.model.op_names()
    assert names[0] == "QUANTIZE" and "DEQUANTIZE" in names
    assert names.count("QUANTIZE") == 1 and names.count("DEQUANTIZE") == 1, names  # int8 end to end
    assert {d for _, d in op_dtypes(q_cnn.model).values()} == {"int8"}
    fp32 = digits.accuracy(lambda x: cnn(x, training=False))
    int8 = digits.accuracy(q_cnn.model)
    assert int8 >= fp32 * 0.99, (fp32, int8)


def test_user_model_is_unchanged(digits):
    from .conftest import digits_cnn

    model = digits_cnn()
    model(digits.x_test[:2])
    before, layers = weights_of(model), [layer.name for layer in model.layers]
    quantization.fit(model, static(), calib_dataloader=digits.calib(samples=50))
    assert same_weights(before, weights_of(model))
    assert [layer.name for layer in model.layers] == layers
    assert not any("call" in vars(layer) for layer in model.layers)


def test_quantized_model_is_callable_like_keras(cnn, digits, q_cnn):
    x = digits.x_test[:7]
    out = q_cnn.model(tf.constant(x))
    assert out.shape == (7, 10) and out.dtype == np.float32
    ref = np.asarray(cnn(x, training=False))
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 6 / 7
    assert q_cnn(digits.x_test[:3]).shape == (3, 10)  # QuantizedModel forwards the call


def test_scales_are_the_tensorflow_convention(cnn, digits, q_cnn):
    backend = registry.by_name("tensorflow")
    ranges = backend.calibrate(
        cnn, [x for x, _ in digits.calib()[:4]], q_cnn.plan
    )  # fit uses 100 samples
    details = {d["name"]: d for d in q_cnn.model.tensor_details()}
    # the model input: symmetric int8, scale = 2 * max|r| / 254, zero point 0
    r = ranges[cnn.inputs[0]._keras_history.operation.name]
    want = scheme.compute_qparams(r.min, r.max, dtype="int8", scheme="sym", convention="tensorflow")
    interp = q_cnn.model._interpreter()
    first = interp._get_ops_details()[0]
    assert first["op_name"] == "QUANTIZE"
    got = interp.get_tensor_details()[first["outputs"][0]]["quantization_parameters"]
    np.testing.assert_allclose(got["scales"], [want.scale], rtol=1e-6)
    assert list(got["zero_points"]) == [0]
    # conv1's kernel: per output channel, int8 symmetric on [-127, 127]
    kernel = cnn.get_layer("conv1").kernel.numpy()
    wq = scheme.weight_qparams(kernel, granularity="per_channel", axis=3, convention="tensorflow")
    filters = [
        d
        for d in details.values()
        if d["dtype"] == np.int8 and d["shape"].tolist() == [16, 3, 3, 1]
    ]
    assert filters, "conv1's int8 filter is in the model"
    params = filters[0]["quantization_parameters"]
    np.testing.assert_allclose(params["scales"], wq.scale, rtol=1e-6)
    assert not np.any(params["zero_points"])
    # every activation's scale equals the convention's scale of its calibrated range
    by_scale = {
        round(float(scheme.compute_qparams(v.min, v.max, convention="tensorflow").scale), 12)
        for v in ranges.values()
    }
    act_scales = {
        round(float(d["quantization_parameters"]["scales"][0]), 12)
        for d in details.values()
        if d["dtype"] == np.int8
        and len(d["quantization_parameters"]["scales"]) == 1
        and len(d["shape"]) in (2, 4)
        and d["shape"][0] == 1
    }
    assert all(any(abs(s - b) <= 1e-6 * b for b in by_scale) for s in act_scales), (
        act_scales,
        by_scale,
    )


def test_uint8_activations_are_int8_with_zero_point_minus_128(cnn, digits):
    conf = static(op_type_dict={"Conv2D": {"activation": {"dtype": ["uint8"]}}})
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib())
    backend = registry.by_name("tensorflow")
    ranges = backend.calibrate(
        cnn, [x for x, _ in digits.calib()[:4]], q.plan
    )  # fit uses 100 samples
    conv2 = ranges["conv2"]
    want = scheme.compute_qparams(conv2.min, conv2.max, dtype="uint8", convention="tensorflow")
    found = [
        d["quantization_parameters"]
        for d in q.model.tensor_details()
        if d["dtype"] == np.int8 and list(d["quantization_parameters"]["zero_points"]) == [-128]
    ]
    assert any(np.isclose(p["scales"][0], want.scale, rtol=1e-6) for p in found)
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: cnn(x, training=False)) * 0.99


def test_op_name_regex_and_generic_type_keep_layers_fp32(cnn, digits):
    q = quantization.fit(cnn, static(op_name_dict={"fc.*": FP32}), calib_dataloader=digits.calib())
    assert set(q.plan.float_ops()) == {"fc1", "fc2"}
    assert "FULLY_CONNECTED" in q.model.op_names()
    assert all(d == "float32" for op, d in op_dtypes(q.model).values() if op == "FULLY_CONNECTED")
    assert any(d == "int8" for op, d in op_dtypes(q.model).values() if op == "CONV_2D")

    q = quantization.fit(cnn, static(op_type_dict={"Conv": FP32}), calib_dataloader=digits.calib())
    assert set(q.plan.float_ops()) == {"conv1", "dw", "conv2"}
    dtypes = op_dtypes(q.model)
    assert all(d == "float32" for op, d in dtypes.values() if "CONV" in op)
    assert all(d == "int8" for op, d in dtypes.values() if op == "FULLY_CONNECTED")
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: cnn(x, training=False)) * 0.99


def test_first_and_last_recipes(cnn, digits):
    conf = static(
        recipes={
            "first_conv_or_matmul_quantization": False,
            "last_conv_or_matmul_quantization": False,
        }
    )
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib())
    ops = [(op, d) for op, d in op_dtypes(q.model).values()]
    # TFLite ops in execution order: conv1 fp32, dw/conv2/fc1 int8, fc2 fp32
    assert ops[0] == ("CONV_2D", "float32") and ops[-1] == ("FULLY_CONNECTED", "float32"), ops
    assert all(d == "int8" for _, d in ops[1:-1]), ops
    # the plan reported (and saved in inc.json) says what ran
    assert q.plan.ops["conv1"].approach == "fp32" and q.plan.ops["fc2"].approach == "fp32"
    assert q.plan.ops["fc1"].quantized
    default = quantization.fit(cnn, static(), calib_dataloader=digits.calib())
    assert all(d == "int8" for _, d in op_dtypes(default.model).values())


def test_kl_calibration(cnn, digits):
    conf = static(op_type_dict={"Conv2D": {"activation": {"algorithm": ["kl"]}}})
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib())
    assert q.plan.ops["conv1"].activation.algorithm == "kl"
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: cnn(x, training=False)) * 0.97


def test_per_tensor_conv_weights(cnn, digits):
    conf = static(op_type_dict={"Conv2D": {"weight": {"granularity": ["per_tensor"]}}})
    q = quantization.fit(cnn, conf, calib_dataloader=digits.calib())
    filt = [
        d
        for d in q.model.tensor_details()
        if d["dtype"] == np.int8 and d["shape"].tolist() == [16, 3, 3, 1]
    ]
    assert len(filt[0]["quantization_parameters"]["scales"]) == 1


def test_functional_dense_model_with_add(mlp, digits):
    q = quantization.fit(mlp, static(), calib_dataloader=digits.calib())
    assert {op.type for op in registry.by_name("tensorflow").ops(mlp)} == {"Dense", "Add"}
    dtypes = op_dtypes(q.model)
    assert {d for _, d in dtypes.values()} == {"int8"}, dtypes
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: mlp(x, training=False)) * 0.99
    assert q.model({"pixels": digits.x_test[:4]}).shape == (4, 10)


def test_mnist_cnn(mnist_model, mnist):
    q = quantization.fit(mnist_model, static(), calib_dataloader=mnist.calib())
    fp32 = mnist.accuracy(lambda x: mnist_model(x, training=False))
    assert fp32 > 0.9
    assert mnist.accuracy(q.model) >= fp32 * 0.99


def test_tf_data_calibration(cnn, digits):
    ds = tf.data.Dataset.from_tensor_slices((digits.x_train[:100], digits.y_train[:100])).batch(20)
    q = quantization.fit(cnn, static(), calib_dataloader=ds)
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: cnn(x, training=False)) * 0.99


def test_save_load_round_trip(q_cnn, digits, tmp_path):
    q_cnn.save(tmp_path / "out")
    assert (tmp_path / "out" / "model.tflite").is_file()
    loaded = load(tmp_path / "out")
    assert isinstance(loaded.model, TfLiteModel)
    np.testing.assert_array_equal(loaded.model(digits.x_test), q_cnn.model(digits.x_test))
    assert loaded.plan == q_cnn.plan


def test_keras_file_path_is_accepted(cnn, digits, tmp_path):
    path = tmp_path / "cnn.keras"
    cnn.save(path)
    before = path.read_bytes()
    q = quantization.fit(str(path), static(), calib_dataloader=digits.calib())
    assert path.read_bytes() == before
    assert digits.accuracy(q.model) >= digits.accuracy(lambda x: cnn(x, training=False)) * 0.99


def test_threads_each_get_an_interpreter(q_cnn, digits):
    expected = q_cnn.model(digits.x_test[:16])
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(q_cnn.model(digits.x_test[:16]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 15
    assert all(np.array_equal(r, expected) for r in results)


# -- bad input ---------------------------------------------------------------------------


def test_calibration_shape_mismatch_is_a_data_error(cnn):
    bad = [np.zeros((4, 28, 28, 1), np.float32)]
    with pytest.raises(DataError, match=r"element shape \(28, 28, 1\).*expects \(batch, 8, 8, 1\)"):
        quantization.fit(cnn, static(), calib_dataloader=bad)


def test_subclassed_model_gets_a_clear_error(digits):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(keras.ops.reshape(x, (-1, 64)))

    net = Net()
    net(digits.x_test[:1])
    with pytest.raises(ModelError, match=r"subclassed Keras model.*Sequential"):
        quantization.fit(net, static(), calib_dataloader=digits.calib())


def test_saved_model_directory_gets_a_clear_error(cnn, tmp_path, digits):
    cnn.export(tmp_path / "sm", verbose=False)
    with pytest.raises(ModelError, match=r"SavedModel.*\.keras"):
        quantization.fit(str(tmp_path / "sm"), static(), calib_dataloader=digits.calib())


def test_layers_without_int8_path_stay_float_with_a_warning(digits):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2DTranspose(8, 3, activation="relu", name="up")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, name="head")(h)
    model = keras.Model(inputs, outputs)
    with pytest.warns(UserWarning, match=r"up \(Conv2DTranspose\)"):
        q = quantization.fit(model, static(), calib_dataloader=digits.calib(samples=50))
    assert q.plan.quantized_ops() == ["head"]
    ref = np.asarray(model(digits.x_test[:8]))
    np.testing.assert_allclose(q.model(digits.x_test[:8]), ref, atol=0.2 * np.abs(ref).max())


def test_gpu_without_gpu_is_device_not_available(cnn, digits):
    for backend in ("itex",):
        with pytest.raises(DeviceNotAvailable, match="no GPU"):
            quantization.fit(
                cnn, static(backend=backend, device="gpu"), calib_dataloader=digits.calib()
            )


def test_itex_runs_signed_int8_activations(cnn, digits):
    q = quantization.fit(cnn, static(backend="itex"), calib_dataloader=digits.calib())
    assert q.plan.backend == "itex"
    assert {d for _, d in op_dtypes(q.model).values()} == {"int8"}
    conf = static(backend="itex", op_type_dict={"Conv2D": {"activation": {"dtype": ["uint8"]}}})
    with pytest.raises(ConfigError, match=r"uint8.*allows \['int8'\]"):
        quantization.fit(cnn, conf, calib_dataloader=digits.calib())


def test_unsupported_settings_are_config_errors(cnn, digits):
    with pytest.raises(ConfigError, match="dynamic"):
        quantization.fit(cnn, PostTrainingQuantConfig(approach="dynamic"))
    with pytest.raises(ConfigError, match="reduce_range"):
        quantization.fit(cnn, static(reduce_range=True), calib_dataloader=digits.calib())
    with pytest.raises(ConfigError, match="per_channel"):
        quantization.fit(
            cnn,
            static(op_type_dict={"Dense": {"weight": {"granularity": ["per_channel"]}}}),
            calib_dataloader=digits.calib(),
        )


def test_interpreter_deprecation_warning_is_not_leaked(q_cnn, digits):
    fresh = TfLiteModel(q_cnn.model.content, q_cnn.model.spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh(digits.x_test[:2])


def test_shared_layer_stays_float_with_a_warning(digits):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    shared = keras.layers.Dense(64, activation="relu", name="shared")
    h = shared(keras.layers.Dense(64, activation="relu", name="in_proj")(h))
    h = shared(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    with pytest.warns(UserWarning, match=r"shared \(Dense, called more than once\)"):
        q = quantization.fit(model, static(), calib_dataloader=digits.calib(samples=50))
    assert "shared" not in q.plan.ops and set(q.plan.quantized_ops()) == {"in_proj", "head"}
    ref = np.asarray(model(digits.x_test[:8]))
    np.testing.assert_allclose(q.model(digits.x_test[:8]), ref, atol=0.1 * np.abs(ref).max() + 1e-3)


def test_transformer_encoder_dense_layers_run_int8(digits):
    from .conftest import digits_encoder, trained

    x_train, x_test = digits.x_train[..., 0], digits.x_test[..., 0]
    model = trained("digits_encoder", digits_encoder, x_train, digits.y_train, epochs=15)
    with pytest.warns(UserWarning, match=r"mha \(MultiHeadAttention\)"):
        q = quantization.fit(
            model, static(), calib_dataloader=[x_train[i : i + 25] for i in range(0, 200, 25)]
        )
    assert set(q.plan.quantized_ops()) == {"embed", "res1", "ffn1", "ffn2", "res2", "head"}
    dtypes = op_dtypes(q.model)
    # the Dense layers on (batch, 8, d) tensors run as int8 FullyConnected ops
    assert sum(1 for op, d in dtypes.values() if op == "FULLY_CONNECTED" and d == "int8") >= 4
    fp32 = float((np.asarray(model(x_test)).argmax(-1) == digits.y_test).mean())
    int8 = float((q.model(x_test).argmax(-1) == digits.y_test).mean())
    assert fp32 > 0.7 and int8 >= fp32 * 0.99, (fp32, int8)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_two_inputs_two_outputs_keep_their_structure(kind):
    keras.utils.set_random_seed(1)
    a, b = keras.Input((4,), name="a"), keras.Input((6,), name="b")
    ha = keras.layers.Dense(8, activation="relu", name="da")(a)
    hb = keras.layers.Dense(8, activation="relu", name="db")(b)
    h = keras.layers.Concatenate(name="cat")([ha, hb])
    o1, o2 = keras.layers.Dense(3, name="o1")(h), keras.layers.Dense(2, name="o2")(hb)
    if kind == "dict":
        model = keras.Model({"a": a, "b": b}, {"x": o1, "y": o2})
    else:
        model = keras.Model([a, b], [o1, o2])
    rng = np.random.default_rng(0)
    xa, xb = rng.random((32, 4), np.float32), rng.random((32, 6), np.float32)
    feed = {"a": xa, "b": xb} if kind == "dict" else [xa, xb]
    q = quantization.fit(model, static(), calib_dataloader=[(feed, None)])
    assert "cat" in q.plan.quantized_ops()
    ref, got = model(feed), q.model(feed)
    pairs = (
        [(ref[k], got[k]) for k in ("x", "y")]
        if kind == "dict"
        else list(zip(ref, got, strict=True))
    )
    assert isinstance(got, dict if kind == "dict" else list)
    for r, g in pairs:
        r = np.asarray(r)
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, atol=0.05 * np.abs(r).max())
    by_name = q.model({"a": xa[:3], "b": xb[:3]})  # Keras input names work for any model
    first = by_name["x"] if kind == "dict" else by_name[0]
    np.testing.assert_array_equal(first, (got["x"] if kind == "dict" else got[0])[:3])
