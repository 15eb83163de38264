"""Keras 3: quantization-aware training with ``model.fit(..., callbacks=[inc_tf.keras.QuantizationCallback(...)])``.

Needs ``pip install "inc-tf[cpu]" scikit-learn`` (or inc-tf next to the TensorFlow you have).
Run::

    python examples/keras_qat.py [--out DIR]

A small CNN learns scikit-learn's 8x8 digits; a second ``fit`` with inc's callback fine-tunes it
fake-quantized and ends with an int8 TFLite model, saved with its report.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import inc_tf
from inc_core import QuantizationAwareTrainingConfig, load


def build() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the int8 model goes")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="inc-keras-")) / "int8"

    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)

    model = build()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    fp32_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    callback = inc_tf.keras.QuantizationCallback(QuantizationAwareTrainingConfig())
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0, callbacks=[callback])
    callback.save(out)

    int8 = load(out).model  # the int8 TFLite model, run by the TFLite interpreter
    int8_acc = float(np.mean(np.argmax(int8(x_test), axis=1) == y_test))
    print(f"fp32 top-1 {fp32_acc:.4f}   int8 top-1 {int8_acc:.4f}   saved to {out}")
    print(
        "per-op plan:",
        ", ".join(f"{r['op']}={r['activation']}" for r in callback.quantized.op_report()),
    )
    return 0 if int8_acc >= fp32_acc - 0.02 else 1


if __name__ == "__main__":
    sys.exit(main())
