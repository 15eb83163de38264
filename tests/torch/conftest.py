from __future__ import annotations

import pytest
from torch import nn

from . import models


@pytest.fixture(scope="session")
def digits() -> models.Digits:
    return models.load_digits()


@pytest.fixture(scope="session")
def cnn(digits: models.Digits) -> nn.Module:
    return models.trained_cnn(digits)


@pytest.fixture(scope="session")
def cnn_accuracy(cnn: nn.Module, digits: models.Digits) -> float:
    return models.accuracy(cnn, digits)


@pytest.fixture(scope="session")
def calib(digits: models.Digits) -> list:
    return digits.batches("train", 50)[:4]


@pytest.fixture(scope="session")
def bert(digits: models.Digits) -> nn.Module:
    return models.tiny_bert(digits)


@pytest.fixture(scope="session")
def bert_calib(digits: models.Digits) -> list:
    ids, _ = models.digit_tokens(digits, "train")
    return [{"input_ids": ids[i : i + 50]} for i in range(0, 200, 50)]
