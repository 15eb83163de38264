from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from inc_core import backend as registry

from .reference_backend import NumpyMLP, ReferenceBackend, train_mlp
from .tuning_backend import ToyBackend


@pytest.fixture(autouse=True)
def reference_backend() -> Iterator[type[ReferenceBackend]]:
    registry.register(ReferenceBackend)
    yield ReferenceBackend
    registry.unregister(ReferenceBackend.name)


@pytest.fixture(scope="session")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three gaussian classes in 16 dimensions: 600 samples, deterministic."""
    rng = np.random.default_rng(42)
    centers = rng.normal(0, 3, (3, 16))
    y = rng.integers(0, 3, 600)
    x = centers[y] + rng.normal(0, 1.0, (600, 16))
    return x.astype(np.float32), y


@pytest.fixture(scope="session")
def mlp(blobs: tuple[np.ndarray, np.ndarray]) -> NumpyMLP:
    x, y = blobs
    return train_mlp(x, y)


@pytest.fixture
def calib_loader(blobs: tuple[np.ndarray, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = blobs
    return [(x[i : i + 50], y[i : i + 50]) for i in range(0, 200, 50)]


@pytest.fixture
def toy_backend() -> Iterator[None]:
    """The tuning tests' backend (several op types, scripted latency), registered for one test."""
    registry.register(ToyBackend)
    yield
    registry.unregister(ToyBackend.name)
