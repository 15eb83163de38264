"""Quantization-aware training: prepare_compression, the callbacks, save, and training.fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, QuantizationAwareTrainingConfig, QuantizedModel, load
from inc_core import backend as registry
from inc_core.backend import Backend
from inc_core.errors import ConfigError, IncError, ModelError
from inc_core.training import CompressionManager, fit, prepare_compression

from .reference_backend import FakeQuantMLP, NumpyMLP, ReferenceBackend


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float((model(x).argmax(1) == y).mean())


def make_train_func(x: np.ndarray, y: np.ndarray, epochs: int = 2) -> Any:
    def train_func(model: FakeQuantMLP) -> FakeQuantMLP:
        for _ in range(epochs):
            for i in range(0, len(x), 50):
                model.train_step(x[i : i + 50], y[i : i + 50], lr=0.05)
        return model

    return train_func


def test_the_specs_qat_flow(mlp, blobs, tmp_path):
    x, y = blobs
    weights_before = [layer.weight.copy() for layer in mlp.layers]
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    assert isinstance(manager, CompressionManager)
    assert manager.model is mlp  # nothing happens before training starts

    manager.callbacks.on_train_begin()
    model = manager.model
    assert isinstance(model, FakeQuantMLP)
    assert all(layer.activation is not None for layer in model.layers)
    make_train_func(x, y)(model)
    assert all(np.isfinite([layer.lo, layer.hi]).all() for layer in model.layers)
    assert not np.array_equal(model.layers[0].weight, weights_before[0])  # it trained
    manager.callbacks.on_train_end()

    assert isinstance(manager.model, NumpyMLP)
    assert all(layer.input_qparams is not None for layer in manager.model.layers)
    assert accuracy(manager.model, x, y) >= accuracy(mlp, x, y) - 0.03
    out = manager.save(tmp_path / "qat")
    loaded = load(out)
    np.testing.assert_array_equal(loaded.model(x), manager.model(x))
    assert loaded.config["type"] == "QuantizationAwareTrainingConfig"

    for layer, weight in zip(mlp.layers, weights_before, strict=True):
        np.testing.assert_array_equal(layer.weight, weight)  # the user's model is untouched


def test_converted_ranges_are_the_ones_tracked_in_training(mlp, blobs):
    x, y = blobs
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    manager.callbacks.on_train_begin()
    trained = manager.model
    make_train_func(x[:100], y[:100], epochs=1)(trained)
    lo, hi = trained.layers[0].lo, trained.layers[0].hi
    assert (lo, hi) == (float(x[:100].min()), float(x[:100].max()))
    manager.callbacks.on_train_end()
    expected = trained.layers[0].act_qparams("onnxrt")
    got = manager.model.layers[0].input_qparams
    np.testing.assert_array_equal(got.scale, expected.scale)
    np.testing.assert_array_equal(got.zero_point, expected.zero_point)


def test_op_rules_apply_to_qat(mlp, blobs):
    x, y = blobs
    conf = QuantizationAwareTrainingConfig(
        op_name_dict={"fc2": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}}
    )
    manager = prepare_compression(mlp, conf)
    manager.callbacks.on_train_begin()
    assert manager.model.layers[1].activation is None
    make_train_func(x, y, epochs=1)(manager.model)
    manager.callbacks.on_train_end()
    assert manager.quantized is not None
    assert manager.quantized.plan.float_ops() == ["fc2"]
    assert manager.model.layers[1].weight_qparams is None


def test_on_train_end_before_begin_is_an_error(mlp):
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    with pytest.raises(IncError, match=r"on_train_end\(\) was called before .*on_train_begin"):
        manager.callbacks.on_train_end()


def test_save_before_training_ends_is_an_error(mlp, blobs, tmp_path):
    x, y = blobs
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    with pytest.raises(IncError, match="nothing to save yet"):
        manager.save(tmp_path / "q")
    manager.callbacks.on_train_begin()
    make_train_func(x, y, epochs=1)(manager.model)
    with pytest.raises(IncError, match="on_train_end"):
        manager.save(tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_begin_twice_and_end_twice_are_errors(mlp, blobs):
    x, y = blobs
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    manager.callbacks.on_train_begin()
    training = manager.model
    with pytest.raises(IncError, match="called twice"):
        manager.callbacks.on_train_begin()
    assert manager.model is training  # the trained copy is not thrown away
    make_train_func(x, y, epochs=1)(training)
    manager.callbacks.on_train_end()
    with pytest.raises(IncError, match="on_train_end\\(\\) was called twice"):
        manager.callbacks.on_train_end()
    with pytest.raises(IncError, match="prepare_compression"):
        manager.callbacks.on_train_begin()


def test_epoch_and_step_hooks_exist_for_inc_loops(mlp):
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    callbacks = manager.callbacks
    callbacks.on_epoch_begin(0)
    callbacks.on_step_begin(0)
    callbacks.on_before_optimizer_step()
    callbacks.on_after_optimizer_step()
    callbacks.on_step_end()
    callbacks.on_epoch_end()


def test_prepare_compression_takes_a_qat_config(mlp):
    with pytest.raises(ConfigError, match=r"QuantizationAwareTrainingConfig.*quantization.fit"):
        prepare_compression(mlp, PostTrainingQuantConfig())  # type: ignore[arg-type]


def test_a_backend_without_qat_is_refused_at_prepare(mlp):
    class NoQat(ReferenceBackend):
        name = "noqat"
        priority = 0
        supports_qat = False

    registry.register(NoQat)
    try:
        with pytest.raises(ModelError, match=r"not available for numpy models.*quantization.fit"):
            prepare_compression(mlp, QuantizationAwareTrainingConfig())
    finally:
        registry.unregister("noqat")


def test_supports_qat_is_checked_at_registration():
    class Claims(ReferenceBackend):
        name = "claims"
        prepare_qat = Backend.prepare_qat

    with pytest.raises(TypeError, match=r"'claims'\) sets supports_qat = True but does not implement: prepare_qat"):
        registry.register(Claims)


def test_training_fit_without_evaluation_trains_once(mlp, blobs, tmp_path):
    x, y = blobs
    calls: list[Any] = []
    train = make_train_func(x, y, epochs=1)

    def train_func(model: FakeQuantMLP) -> FakeQuantMLP:
        calls.append(model)
        return train(model)

    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    q = fit(manager, train_func)
    assert isinstance(q, QuantizedModel)
    assert len(calls) == 1 and isinstance(calls[0], FakeQuantMLP)
    assert manager.model is q.model and manager.quantized is q
    assert accuracy(q.model, x, y) >= accuracy(mlp, x, y) - 0.03
    manager.save(tmp_path / "q")
    assert load(tmp_path / "q").plan == q.plan


def test_training_fit_argument_rules(mlp):
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    with pytest.raises(ConfigError, match="CompressionManager"):
        fit(mlp, lambda m: m)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="train_func must be callable"):
        fit(manager, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not both"):
        fit(manager, lambda m: m, eval_func=lambda m: 1.0, eval_dataloader=[], eval_metric=1)
    with pytest.raises(ConfigError, match="eval_metric is missing"):
        fit(manager, lambda m: m, eval_dataloader=[])
    manager.callbacks.on_train_begin()
    with pytest.raises(IncError, match=r"do not call callbacks\.on_train_begin"):
        fit(manager, lambda m: m, eval_func=lambda m: 1.0)


def test_fake_quantized_training_lowers_the_loss(mlp, blobs):
    x, y = blobs
    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    manager.callbacks.on_train_begin()
    model = manager.model
    first = [model.train_step(x[i : i + 50], y[i : i + 50]) for i in range(0, 600, 50)]
    for _ in range(3):
        last = [model.train_step(x[i : i + 50], y[i : i + 50]) for i in range(0, 600, 50)]
    assert np.mean(last) < np.mean(first)


def test_training_fit_with_eval_func_tunes_and_retrains_from_fp32(mlp, blobs, tmp_path):
    x, y = blobs
    starts: list[np.ndarray] = []
    train = make_train_func(x, y, epochs=1)

    def train_func(model: FakeQuantMLP) -> FakeQuantMLP:
        starts.append(model.layers[0].weight.copy())
        return train(model)

    manager = prepare_compression(mlp, QuantizationAwareTrainingConfig())
    q = fit(manager, train_func, eval_func=lambda model: accuracy(model, x, y), workspace=tmp_path)
    assert isinstance(q, QuantizedModel)
    assert starts, "train_func ran for the candidates"
    for start in starts:  # every trial starts from the user's fp32 weights
        np.testing.assert_array_equal(start, mlp.layers[0].weight)
    assert accuracy(q.model, x, y) >= accuracy(mlp, x, y) * 0.99
    assert manager.quantized is q


def test_prepare_compression_takes_inc_style_config_lists(mlp):
    manager = prepare_compression(mlp, [QuantizationAwareTrainingConfig()])
    assert isinstance(manager, CompressionManager)
    with pytest.raises(
        ConfigError, match=r"list of 2 configs.*one QuantizationAwareTrainingConfig"
    ):
        prepare_compression(mlp, [QuantizationAwareTrainingConfig()] * 2)
    with pytest.raises(ConfigError, match="list of 0 configs"):
        prepare_compression(mlp, [])
