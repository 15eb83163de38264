"""Conformance kit for inc-tf: a small Keras 3 CNN trained on scikit-learn digits."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from tests.conformance.kit import Kit

BACKEND = "tensorflow"


def make_kit() -> Kit:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="fc"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:1400], y[:1400], epochs=8, batch_size=32, verbose=0)

    def fingerprint(m) -> str:
        digest = hashlib.sha256()
        for w in m.get_weights():
            digest.update(np.ascontiguousarray(w).tobytes())
        digest.update(",".join(layer.name for layer in m.layers).encode())
        return digest.hexdigest()

    def accuracy(m) -> float:
        out = m(x[1400:], training=False) if isinstance(m, keras.Model) else m(x[1400:])
        return float((np.asarray(out).argmax(-1) == y[1400:]).mean())

    calib = [(x[i : i + 25], y[i : i + 25]) for i in range(0, 200, 25)]
    evals = [(x[i : i + 100], y[i : i + 100]) for i in range(1400, len(x), 100)]
    return Kit(
        model=model,
        calib_loader=calib,
        eval_loader=evals,
        fingerprint=fingerprint,
        accuracy=accuracy,
    )
