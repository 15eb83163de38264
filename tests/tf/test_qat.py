"""Quantization-aware training: the Keras callback and the spec's prepare_compression flow."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, QuantizationAwareTrainingConfig, load
from inc_core.errors import ConfigError, IncError, ModelError
from inc_core.training import prepare_compression
from inc_tf.keras import QuantizationCallback
from inc_tf.runtime import TfLiteModel

from .conftest import digits_cnn, same_weights, weights_of


def fresh_cnn(cnn) -> keras.Model:
    """A compiled copy of the trained digits CNN (QAT fine-tunes it)."""
    model = digits_cnn()
    model.set_weights(cnn.get_weights())
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@pytest.fixture(scope="module")
def qat_run(cnn, digits, tmp_path_factory):
    model = fresh_cnn(cnn)
    cb = QuantizationCallback(QuantizationAwareTrainingConfig())
    ckpt = tmp_path_factory.mktemp("ckpt") / "best.keras"
    history = model.fit(
        digits.x_train,
        digits.y_train,
        epochs=2,
        batch_size=64,
        validation_data=(digits.x_test, digits.y_test),
        callbacks=[cb, keras.callbacks.ModelCheckpoint(ckpt, monitor="val_accuracy")],
        verbose=0,
    )
    return model, cb, history, ckpt


def test_callback_trains_through_fake_quant_and_gives_int8(qat_run, digits):
    model, cb, history, _ = qat_run
    assert "val_accuracy" in history.history
    assert isinstance(cb.quantized.model, TfLiteModel)
    names = cb.quantized.model.op_names()
    assert names.count("QUANTIZE") == 1 and names.count("DEQUANTIZE") == 1, names
    fp32 = digits.accuracy(lambda x: model(x, training=False))
    assert digits.accuracy(cb.quantized.model) >= fp32 * 0.99
    # after fit the layers are plain Keras layers again
    assert not any("call" in vars(layer) for layer in model.layers)


def test_fake_quant_is_active_during_fit(cnn, digits):
    model = fresh_cnn(cnn)
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                seen["patched"] = all(
                    "call" in vars(self.model.get_layer(n)) for n in ("conv1", "fc2")
                )

    model.fit(
        digits.x_train[:128],
        digits.y_train[:128],
        epochs=1,
        batch_size=64,
        verbose=0,
        callbacks=[QuantizationCallback(), Probe()],
    )
    assert seen["patched"] is True


def test_checkpoint_holds_the_fp32_layout(qat_run, cnn):
    _, _, _, ckpt = qat_run
    restored = keras.saving.load_model(ckpt)
    assert [w.shape for w in restored.get_weights()] == [w.shape for w in cnn.get_weights()]


def test_fit_twice_continues_and_save_load(cnn, digits, tmp_path):
    model = fresh_cnn(cnn)
    cb = QuantizationCallback()
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, callbacks=[cb], verbose=0)
    first_ranges = cb._quantizer.ranges()
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, callbacks=[cb], verbose=0)
    second = cb._quantizer.ranges()
    assert set(first_ranges) == set(second)
    assert any(float(first_ranges[k].max) != float(second[k].max) for k in second)
    cb.save(tmp_path / "qat")
    loaded = load(tmp_path / "qat")
    np.testing.assert_array_equal(loaded.model(digits.x_test), cb.quantized.model(digits.x_test))
    assert (
        digits.accuracy(loaded.model) >= digits.accuracy(lambda x: model(x, training=False)) * 0.99
    )


def test_prepare_compression_flow(cnn, digits, tmp_path):
    model = fresh_cnn(cnn)
    before = weights_of(model)
    manager = prepare_compression(model, QuantizationAwareTrainingConfig())
    manager.callbacks.on_train_begin()
    trainee = manager.model
    assert trainee is not model
    trainee.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, verbose=0)
    manager.callbacks.on_train_end()
    manager.save(tmp_path / "out")
    assert same_weights(before, weights_of(model))  # the user's model was copied, not trained
    loaded = load(tmp_path / "out")
    fp32 = digits.accuracy(lambda x: model(x, training=False))
    assert digits.accuracy(loaded.model) >= fp32 * 0.99


def test_callback_rejects_a_ptq_config():
    with pytest.raises(
        ConfigError, match=r"QuantizationAwareTrainingConfig.*PostTrainingQuantConfig"
    ):
        QuantizationCallback(PostTrainingQuantConfig())


def test_save_before_fit_is_an_error(tmp_path):
    with pytest.raises(IncError, match="nothing to save yet"):
        QuantizationCallback().save(tmp_path / "x")


def test_callback_on_a_batchnorm_model(bn_cnn, digits):
    from .conftest import digits_bn_cnn

    model = digits_bn_cnn()
    model.set_weights(bn_cnn.get_weights())
    model.compile(
        optimizer=keras.optimizers.Adam(5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    cb = QuantizationCallback()
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, callbacks=[cb], verbose=0)
    fp32 = digits.accuracy(lambda x: model(x, training=False))
    assert digits.accuracy(cb.quantized.model) >= fp32 * 0.99


def test_callback_on_an_unbuilt_model_says_to_build_it(digits):
    model = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ModelError, match=r"not built.*keras.Input"):
        model.fit(
            digits.x_train[:64],
            digits.y_train[:64],
            epochs=1,
            callbacks=[QuantizationCallback()],
            verbose=0,
        )


def test_callback_keeps_separable_convs_fp32_and_the_plan_says_so(digits):
    """The callback trains the user's own layers: a SeparableConv2D stays one float layer there
    (PTQ splits it into int8 depthwise + pointwise convs on its private copy)."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep")(inputs)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(keras.layers.Flatten()(h)))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    cb = QuantizationCallback()
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, callbacks=[cb], verbose=0)
    quantized = cb.quantized.plan.quantized_ops()
    assert "conv" in quantized and "head" in quantized
    assert "sep" not in quantized and "sep_depthwise" not in quantized
    assert {row["op"] for row in cb.quantized.op_report()} >= {"sep", "sep_depthwise", "conv"}
    fp32 = digits.accuracy(lambda x: model(x, training=False))
    assert digits.accuracy(cb.quantized.model) >= fp32 - 0.05
