"""ONNX with inc-ort alone: quantize a digits classifier with accuracy-aware tuning.

Needs only ``pip install inc-ort scikit-learn`` (inc-ort brings onnxruntime and onnx; scikit-learn
gives the data and trains the fp32 model in seconds). Run::

    python examples/onnx_tuning.py [--out DIR]

It writes the fp32 model as an ONNX file, lets inc tune until int8 accuracy is within 1% of fp32,
saves the int8 model (model.onnx, inc.json, report.html) and prints the report's tables.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.report.__main__ import main as print_report


def write_onnx(clf: MLPClassifier, path: Path) -> None:
    """The trained MLP as MatMul/Add/Relu nodes producing logits."""
    nodes, weights, current = [], [], "input"
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        weights += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
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
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the int8 model goes")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="inc-onnx-"))
    out = args.out or work / "int8"

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=0).fit(
        x_train, y_train
    )
    fp32_path = work / "digits.onnx"
    write_onnx(clf, fp32_path)

    def accuracy(model: onnx.ModelProto) -> float:
        """The user's evaluation: top-1 on the held-out digits, run by onnxruntime."""
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return float((session.run(None, {"input": x_test})[0].argmax(1) == y_test).mean())

    calib = [(x_train[i : i + 32], y_train[i : i + 32]) for i in range(0, 320, 32)]
    conf = PostTrainingQuantConfig(
        accuracy_criterion=AccuracyCriterion(criterion="relative", tolerable_loss=0.01),
        # objective "accuracy": this MLP runs in microseconds, where a busy machine cannot
        # tell int8 from fp32 apart; on a real model keep the default "performance"
        tuning_criterion=TuningCriterion(strategy="basic", max_trials=10, objective="accuracy"),
    )
    q_model = quantization.fit(
        str(fp32_path), conf, calib_dataloader=calib, eval_func=accuracy, workspace=work / "tuning"
    )
    q_model.save(out)

    fp32_acc, int8_acc = accuracy(onnx.load(fp32_path)), accuracy(q_model.model)
    print(f"fp32 top-1 {fp32_acc:.4f}   int8 top-1 {int8_acc:.4f}   saved to {out}\n")
    print_report([str(out)])
    return 0 if int8_acc >= fp32_acc * 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
