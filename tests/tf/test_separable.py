"""SeparableConv2D runs int8 as the two kernels TFLite has for it: depthwise + 1x1 conv."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ModelError
from inc_tf import separable

from .conftest import same_weights, weights_of


def xception_block(sequential: bool = False) -> keras.Model:
    """Random-weight blocks shaped like mini-Xception's: separable convs with BN and ReLU, a
    strided residual 1x1 conv, a separable conv without bias and one with depth multiplier 2."""
    keras.utils.set_random_seed(0)
    if sequential:
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep"),
                keras.layers.Flatten(name="flat"),
                keras.layers.Dense(10, name="head"),
            ]
        )
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    s = keras.layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(h)
    s = keras.layers.BatchNormalization(name="bn1")(s)
    s = keras.layers.Activation("relu", name="relu1")(s)
    s = keras.layers.SeparableConv2D(
        16, 3, strides=2, padding="same", depth_multiplier=2, name="sep2"
    )(s)
    r = keras.layers.Conv2D(16, 1, strides=2, name="skip")(h)
    h = keras.layers.Add(name="add")([s, r])
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(h), name="xception_block")
    bn = model.get_layer("bn1")  # a BN that is not the identity, so folding is tested
    rng = np.random.default_rng(1)
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, 16).astype("float32"),
            rng.normal(0, 0.1, 16).astype("float32"),
            rng.normal(0, 0.2, 16).astype("float32"),
            rng.uniform(0.5, 2.0, 16).astype("float32"),
        ]
    )
    return model


@pytest.mark.parametrize("sequential", [False, True], ids=["functional", "sequential"])
def test_split_computes_the_same_function(digits, sequential):
    model = xception_block(sequential)
    before = weights_of(model)
    split = separable.decompose(model)
    kinds = {layer.name: type(layer).__name__ for layer in split.layers}
    for name in ("sep",) if sequential else ("sep1", "sep2"):
        assert kinds[name + "_depthwise"] == "DepthwiseConv2D"
        assert kinds[name] == "Conv2D" and split.get_layer(name).kernel_size == (1, 1)
    assert "SeparableConv2D" not in kinds.values()
    x = digits.x_test[:16]
    ref, out = np.asarray(model(x)), np.asarray(split(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    assert same_weights(before, weights_of(model))  # the user's model is not touched
    assert all(type(layer).__name__ != "DepthwiseConv2D" for layer in model.layers)


def test_separable_convs_run_int8_depthwise_and_conv_kernels(digits):
    model = xception_block()
    conf = PostTrainingQuantConfig(guards=False)  # the kernels, not the speed guard's choice
    q = quantization.fit(model, conf, calib_dataloader=digits.calib(samples=100))
    rows = {row["op"]: row for row in q.op_report()}
    for name in ("sep1", "sep2"):
        assert rows[name + "_depthwise"]["runs_as"] == "DEPTHWISE_CONV_2D (int8)", rows
        assert rows[name]["runs_as"] == "CONV_2D (int8)", rows
    interp = q.model._interpreter()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    kinds = [
        (op["op_name"], tensors[op["outputs"][0]]["dtype"].__name__)
        for op in interp._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")
    ]
    # stem, sep1 (2 kernels), sep2 (2), skip: every one reads and writes int8
    assert sorted(kinds) == sorted(
        [("CONV_2D", "int8")] * 4 + [("DEPTHWISE_CONV_2D", "int8")] * 2
    ), kinds
    x = digits.x_test[:64]
    ref = np.asarray(model(x))
    out = q.model(x)
    assert np.mean(ref.argmax(-1) == out.argmax(-1)) >= 0.9
    assert "SeparableConv2D" in {type(layer).__name__ for layer in model.layers}


def test_rules_name_the_halves(digits):
    model = xception_block()
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    conf = PostTrainingQuantConfig(guards=False, op_name_dict={"sep2.*": fp32})
    q = quantization.fit(model, conf, calib_dataloader=digits.calib(samples=50))
    quantized = q.plan.quantized_ops()
    assert "sep1" in quantized and "sep1_depthwise" in quantized
    assert "sep2" not in quantized and "sep2_depthwise" not in quantized


def test_a_name_clash_with_the_depthwise_half_is_a_model_error():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 1, name="sep_depthwise")(inputs)
    h = keras.layers.SeparableConv2D(4, 3, name="sep")(h)
    with pytest.raises(ModelError, match="sep_depthwise"):
        separable.decompose(keras.Model(inputs, h))
