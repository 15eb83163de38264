from __future__ import annotations

import numpy as np
import pytest
from mxnet import gluon

from . import models


def pytest_configure(config: pytest.Config) -> None:
    # mxnet 1.9.1 touches scipy.sparse.csr on every mx.nd.array call; nothing we can change
    config.addinivalue_line(
        "filterwarnings", "ignore:Please import `csr_matrix`:DeprecationWarning"
    )


@pytest.fixture(scope="session")
def digits() -> models.Dataset:
    return models.digits()


@pytest.fixture(scope="session")
def digits_net(digits: models.Dataset) -> gluon.HybridBlock:
    """A trained digits CNN (conv-relu, bn, conv-relu, pool, dense-relu, dense); not hybridized."""
    return models.trained("digits", models.digits_cnn(), digits, epochs=10)


@pytest.fixture(scope="session")
def digits_calib(digits: models.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return models.batches(digits.x_train[:300], digits.y_train[:300], 50)
