"""Conformance kit for the ONNX Runtime backend: the digits CNN saved as a .onnx file."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.conformance.kit import Kit

BACKEND = "onnxrt"


def make_kit() -> Kit:
    import onnx
    import onnxruntime as ort

    from tests.ort import models

    digits = models.load_digits()
    folder = Path(tempfile.mkdtemp(prefix="inc-ort-kit-"))
    path = folder / "digits_cnn.onnx"
    onnx.save_model(models.cnn_onnx(models.cnn_params(digits)), str(path))
    calib = [(digits.x_train[i : i + 50], digits.y_train[i : i + 50]) for i in range(0, 200, 50)]
    evaluation = [
        (digits.x_test[i : i + 100], digits.y_test[i : i + 100])
        for i in range(0, len(digits.x_test), 100)
    ]

    def fingerprint(model: Any) -> str:
        return hashlib.sha256(Path(model).read_bytes()).hexdigest()

    def accuracy(model: Any) -> float:
        source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
        sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"image": digits.x_test})[0]
        return float(np.mean(logits.argmax(1) == digits.y_test))

    return Kit(
        model=str(path),
        calib_loader=calib,
        eval_loader=evaluation,
        fingerprint=fingerprint,
        accuracy=accuracy,
    )
