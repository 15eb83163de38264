"""inc-tf's bad-input and fault catalogue: each case an inc error naming what was wrong and what
is allowed, the user's Keras model (weights, layers) and files unchanged, nothing left behind."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ConfigError, DataError, DeviceNotAvailable, ModelError
from tests.bad_input import Case, assert_refused, conf, listing

STATIC = PostTrainingQuantConfig(approach="static", guards=False)


def digits_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, name="fc"),
        ],
        name="digits_cnn",
    )


def two_inputs() -> keras.Model:
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    joined = keras.layers.Concatenate(name="join")([a, b])
    return keras.Model([a, b], keras.layers.Dense(2, name="fc")(joined), name="two_inputs")


class Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.fc = keras.layers.Dense(3)

    def call(self, x: Any) -> Any:
        return self.fc(x)


def subclassed() -> keras.Model:
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    return model


def recurrent_only() -> keras.Model:
    return keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, name="lstm")])


def fingerprint(model: Any) -> str:
    """Weights, layer names and the model's config: what fit must not change."""
    digest = hashlib.sha256()
    if isinstance(model, keras.Model):
        for layer in model.layers:
            digest.update(layer.name.encode())
        for weight in model.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
    elif isinstance(model, (str, Path)) and Path(model).is_file():
        digest.update(Path(model).read_bytes())
    return digest.hexdigest()


def images(n: int = 16, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).random((n, 8, 8, 1)).astype(dtype)


def saved(work: Path, name: str = "m.keras") -> Path:
    path = work / name
    digits_cnn().save(path)
    return path


def weights_file(work: Path) -> Path:
    path = work / "m.weights.h5"
    digits_cnn().save_weights(path)
    return path


def written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def saved_model_dir(work: Path) -> Path:
    path = work / "exported"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"\x08\x01")
    return path


def with_nan(batch: int) -> list[np.ndarray]:
    data = [images() for _ in range(4)]
    data[batch][2, 3, 3, 0] = np.nan
    return data


CASES = [
    # --- models that are not (quantizable) Keras models
    Case(
        "layer-instead-of-model",
        lambda w: keras.layers.Dense(3),
        conf(),
        lambda: [images()],
        ModelError,
        ("keras Dense layer is not a model", "keras.Sequential", "functional keras.Model"),
    ),
    Case(
        "subclassed-model",
        lambda w: subclassed(),
        conf(),
        lambda: [np.zeros((4, 4), "float32")],
        ModelError,
        ("Subclassed is a subclassed Keras model", "keras.Sequential([...])"),
    ),
    Case(
        "model-not-built",
        lambda w: keras.Sequential([keras.layers.Dense(3)]),
        conf(),
        lambda: [images()],
        ModelError,
        ("is not built", "keras.Input(shape)"),
    ),
    Case(
        "no-quantizable-layer",
        lambda w: recurrent_only(),
        conf(),
        lambda: [np.zeros((4, 5, 3), "float32")],
        ModelError,
        ("no op that tensorflow can quantize", "Conv2D", "Dense"),
    ),
    Case(
        "tflite-model-object",
        lambda w: quantization.fit(digits_cnn(), STATIC, calib_dataloader=[images()]).model,
        conf(),
        lambda: [images()],
        ModelError,
        ("already an int8 TFLite model", "fp32 Keras model"),
    ),
    Case(
        "tensorflow-object-not-a-model",
        lambda w: __import__("tensorflow").Variable(1.0),
        conf(),
        lambda: [images()],
        ModelError,
        ("is not a Keras model", "keras.Model"),
    ),
    # --- files
    Case(
        "keras-path-missing",
        lambda w: w / "missing.keras",
        conf(),
        lambda: [images()],
        ModelError,
        ("missing.keras does not exist", "model.save('model.keras')"),
    ),
    Case(
        "keras-file-corrupt",
        lambda w: written(w / "broken.keras", b"not a zip archive" * 8),
        conf(),
        lambda: [images()],
        ModelError,
        ("broken.keras is not a .keras file", "zip archive"),
    ),
    Case(
        "keras-zip-without-a-model",
        lambda w: written(w / "empty.keras", _empty_zip()),
        conf(),
        lambda: [images()],
        ModelError,
        ("empty.keras could not be loaded by keras.saving.load_model",),
    ),
    Case(
        "weights-only-file",
        lambda w: weights_file(w),
        conf(),
        lambda: [images()],
        ModelError,
        ("holds weights only", "model.load_weights(path)"),
    ),
    Case(
        "tflite-file",
        lambda w: written(w / "model.tflite", b"TFL3" * 16),
        conf(),
        lambda: [images()],
        ModelError,
        ("is a TFLite model", "quantize the Keras model"),
    ),
    Case(
        "saved-model-folder",
        lambda w: saved_model_dir(w),
        conf(),
        lambda: [images()],
        ModelError,
        ("is a SavedModel", "TFSMLayer", ".keras file"),
    ),
    Case(
        "folder-inc-saved",
        lambda w: _inc_saved(w),
        conf(),
        lambda: [images()],
        ModelError,
        ("inc already quantized", "inc_core.load(path)"),
    ),
    # --- configuration the TensorFlow backend cannot honour
    Case(
        "dynamic-approach",
        lambda w: digits_cnn(),
        lambda: PostTrainingQuantConfig(approach="dynamic"),
        lambda: None,
        ConfigError,
        ("approach='dynamic' is not available for TensorFlow", "approach='static'"),
    ),
    Case(
        "reduce-range",
        lambda w: digits_cnn(),
        conf(reduce_range=True),
        lambda: [images()],
        ConfigError,
        ("reduce_range=True is not available for TensorFlow",),
    ),
    Case(
        "gpu-not-present",
        lambda w: digits_cnn(),
        conf(backend="itex", device="gpu"),
        lambda: [images()],
        DeviceNotAvailable,
        ("device='gpu'", "sees no GPU", "use device='cpu'"),
    ),
    Case(
        "torch-backend-value",
        lambda w: digits_cnn(),
        conf(backend="ipex"),
        lambda: [images()],
        ConfigError,
        ("backend='ipex' is not available for tensorflow models", "'itex'"),
    ),
    Case(
        "asymmetric-activations",
        lambda w: digits_cnn(),
        conf(op_type_dict={"Conv2D": {"activation": {"scheme": ["asym"]}}}),
        lambda: [images()],
        ConfigError,
        ("'conv' (Conv2D)", "activation scheme ['asym'] is not supported", "['sym']"),
    ),
    Case(
        "per-channel-dense-weights",
        lambda w: digits_cnn(),
        conf(op_type_dict={"Dense": {"weight": {"granularity": ["per_channel"]}}}),
        lambda: [images()],
        ConfigError,
        ("'fc' (Dense)", "weight granularity ['per_channel']", "['per_tensor']"),
    ),
    Case(
        "layer-name-not-in-the-model",
        lambda w: digits_cnn(),
        conf(op_name_dict={"conv9": {"activation": {"dtype": ["fp32"]}}}),
        lambda: [images()],
        ConfigError,
        ("'conv9'", "matches no op"),
    ),
    Case(
        "layer-type-not-in-the-model",
        lambda w: digits_cnn(),
        conf(op_type_dict={"LSTM": {"activation": {"dtype": ["fp32"]}}}),
        lambda: [images()],
        ConfigError,
        ("LSTM",),
    ),
    # --- calibration data
    Case(
        "wrong-image-size",
        lambda w: digits_cnn(),
        conf(),
        lambda: [images().repeat(2, axis=1)],
        DataError,
        ("element shape (16, 8, 1)", "the model expects (batch, 8, 8, 1)"),
    ),
    Case(
        "flat-vectors-for-images",
        lambda w: digits_cnn(),
        conf(),
        lambda: [images().reshape(16, 64)],
        DataError,
        ("element shape (64,)", "(batch, 8, 8, 1)"),
    ),
    Case(
        "one-array-for-two-inputs",
        lambda w: two_inputs(),
        conf(),
        lambda: [np.zeros((4, 4), "float32")],
        DataError,
        ("the model takes 2 inputs", "['a', 'b']", "gave 1"),
    ),
    Case(
        "dict-without-an-input",
        lambda w: two_inputs(),
        conf(),
        lambda: [{"a": np.zeros((4, 4), "float32")}],
        DataError,
        ("without the model's inputs ['b']", "keys given: ['a']"),
    ),
    Case(
        "nan-in-a-later-batch",
        lambda w: digits_cnn(),
        conf(calibration_sampling_size=64),
        lambda: with_nan(2),
        DataError,
        ("calib_dataloader batch 2", "1 NaN", "finite"),
    ),
    Case(
        "string-images",
        lambda w: digits_cnn(),
        conf(),
        lambda: [np.full((4, 8, 8, 1), "0.5")],
        DataError,
        ("dtype <U3", "strings", "numeric"),
    ),
    Case(
        "dtype-changes-in-a-later-batch",
        lambda w: digits_cnn(),
        conf(calibration_sampling_size=64),
        lambda: [images(), images(dtype="float64")],
        DataError,
        ("calib_dataloader batch 1", "float64", "batch 0's has float32"),
    ),
    Case(
        "empty-loader",
        lambda w: digits_cnn(),
        conf(),
        lambda: [],
        DataError,
        ("yielded no samples",),
    ),
]


def _empty_zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    return buffer.getvalue()


def _inc_saved(work: Path) -> Path:
    q = quantization.fit(digits_cnn(), STATIC, calib_dataloader=[images()])
    q.save(work / "int8")
    return work / "int8"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, sandbox: Path) -> None:
    assert_refused(case, sandbox, fingerprint)


def test_a_keras_file_is_quantized_and_left_as_it_was(sandbox: Path) -> None:
    # the good twin of the file cases: the .keras path works, and the file is not touched
    path = saved(sandbox / "work")
    before = path.read_bytes()
    files = listing(sandbox)
    q = quantization.fit(str(path), STATIC, calib_dataloader=[images()])
    assert q.plan.quantized_ops()
    assert path.read_bytes() == before
    assert listing(sandbox) == files
