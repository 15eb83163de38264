"""Quickstart: quantize a digits classifier to int8 with inc and compare it with fp32.

Trains a small MLP on scikit-learn's digits (seconds), writes it as an ONNX file, then runs
the user's three lines::

    q_model = quantization.fit("digits.onnx", PostTrainingQuantConfig(), calib_dataloader=loader)
    q_model.save("out/")

and prints accuracy, latency and the per-op plan of fp32 vs int8.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from inc_core import PostTrainingQuantConfig, load, quantization


def train_digits() -> tuple[MLPClassifier, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=300, random_state=0).fit(x_train, y_train)
    return clf, x_train, x_test, y_train, y_test


def to_onnx(clf: MLPClassifier, path: Path) -> None:
    """The MLP as MatMul/Add/Relu nodes, producing logits."""
    nodes, inits, current = [], [], "input"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"), numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"], name=f"fc{i}"))
        out = "logits" if i == last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out], name=f"fc{i}_bias"))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def measure(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    accuracy = float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())
    times = []
    for _ in range(200):
        start = time.perf_counter()
        sess.run(None, {"input": x[:32]})
        times.append(time.perf_counter() - start)
    return accuracy, statistics.median(times) * 1e3


def main() -> int:
    clf, x_train, x_test, _, y_test = train_digits()
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "digits.onnx"
        to_onnx(clf, fp32_path)
        loader = [(x_train[i : i + 32], None) for i in range(0, 320, 32)]
        q_model = quantization.fit(str(fp32_path), PostTrainingQuantConfig(approach="static"), calib_dataloader=loader)
        q_model.save(Path(tmp) / "out")
        reloaded = load(Path(tmp) / "out")

        fp32_acc, fp32_ms = measure(session(fp32_path), x_test, y_test)
        int8_acc, int8_ms = measure(session(reloaded.model), x_test, y_test)
    print(f"{'model':<6} {'top-1':>7} {'ms/batch32':>11}")
    print(f"{'fp32':<6} {fp32_acc:>7.4f} {fp32_ms:>11.3f}")
    print(f"{'int8':<6} {int8_acc:>7.4f} {int8_ms:>11.3f}   speedup x{fp32_ms / int8_ms:.2f}")
    print()
    rows = q_model.op_report()
    width = max(len(row["op"]) for row in rows) + 2
    print(f"{'op':<{width}} {'type':<8} {'approach':<9} {'activation':<10} weight")
    for row in rows:
        print(f"{row['op']:<{width}} {row['type']:<8} {row['approach']:<9} {row['activation']:<10} {row['weight']}")
    return 0 if int8_acc >= fp32_acc * 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
