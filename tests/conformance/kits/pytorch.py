"""Conformance kit for the PyTorch backend: the digits CNN as an nn.Module."""

from __future__ import annotations

from tests.conformance.kit import Kit

BACKEND = "pytorch"


def make_kit() -> Kit:
    from tests.torch import models

    digits = models.load_digits()
    model = models.trained_cnn(digits)
    return Kit(
        model=model,
        calib_loader=digits.batches("train", 50)[:4],
        eval_loader=digits.batches("test", 100),
        fingerprint=models.fingerprint,
        accuracy=lambda m: models.accuracy(m, digits),
    )
