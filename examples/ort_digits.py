"""Quantize a small ONNX CNN (trained in numpy on scikit-learn's digits) with inc, three ways.

Run: .tox/ort/bin/python examples/ort_digits.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import inc_ort
from inc_core import PostTrainingQuantConfig, load, quantization
from tests.ort import models


def top1(path: Path, digits: models.Digits) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(sess.run(None, {"image": digits.x_test})[0].argmax(1) == digits.y_test))


def main() -> None:
    digits = models.load_digits()
    work = Path(tempfile.mkdtemp(prefix="inc-ort-example-"))
    fp32 = work / "digits_cnn.onnx"
    onnx.save_model(models.cnn_onnx(models.cnn_params(digits)), str(fp32))
    calib = [(digits.x_train[i : i + 50], digits.y_train[i : i + 50]) for i in range(0, 200, 50)]

    # 1. inc's API: a path in, a folder out (model.onnx + inc.json)
    q = quantization.fit(
        str(fp32), PostTrainingQuantConfig(approach="static"), calib_dataloader=calib
    )
    q.save(work / "inc_out")
    print("fit:", q.plan.quantized_ops(), "->", work / "inc_out")
    print("  reloaded plan equal:", load(work / "inc_out").plan == q.plan)

    # 2. onnxruntime's signature, inc inside
    inc_ort.quantize_static(
        str(fp32), str(work / "dropin.onnx"), [x for x, _ in calib], per_channel=True
    )

    # 3. the command line
    np.savez(work / "calib.npz", image=np.concatenate([x for x, _ in calib]))
    from inc_ort.cli import main as cli

    cli(["quantize", str(fp32), str(work / "cli.onnx"), "--calib", str(work / "calib.npz")])

    for name in ("digits_cnn.onnx", "inc_out/model.onnx", "dropin.onnx", "cli.onnx"):
        print(f"{name:22s} top-1 {top1(work / name, digits):.4f}")


if __name__ == "__main__":
    main()
