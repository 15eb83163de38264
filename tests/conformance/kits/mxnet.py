"""Conformance kit for the MXNet backend: a Gluon CNN trained on scikit-learn digits."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.conformance.kit import Kit

BACKEND = "mxnet"


def make_kit() -> Kit:
    from tests.mxnet import models

    digits = models.digits()
    net = models.trained("digits", models.digits_cnn(), digits, epochs=10)
    calib = models.batches(digits.x_train[:200], digits.y_train[:200], 50)
    evaluation = models.batches(digits.x_test, digits.y_test, 100)

    def fingerprint(model: Any) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(models.fingerprint(model).items()):
            digest.update(name.encode() + data)
        return digest.hexdigest()

    def accuracy(model: Any) -> float:
        return models.accuracy(model, digits.x_test, digits.y_test)

    return Kit(
        model=net,
        calib_loader=calib,
        eval_loader=evaluation,
        fingerprint=fingerprint,
        accuracy=accuracy,
    )
