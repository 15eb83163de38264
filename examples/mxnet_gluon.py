"""MXNet Gluon: post-training int8 quantization of a ``HybridBlock`` with ``quantization.fit``.

Needs ``pip install inc-mxnet scikit-learn`` (MXNet 1.9.1 needs numpy<1.24: inc-mxnet pins it).
Run::

    python examples/mxnet_gluon.py [--out DIR]

A small Gluon CNN learns scikit-learn's 8x8 digits; inc calibrates it on 300 training images,
tunes until int8 top-1 is within 1% of fp32 and saves the int8 model with its report.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, load, quantization


def build() -> gluon.HybridBlock:
    net = gluon.nn.HybridSequential(prefix="digits_")
    with net.name_scope():
        net.add(
            gluon.nn.Conv2D(16, 3, padding=1, activation="relu"),
            gluon.nn.Conv2D(32, 3, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(),
            gluon.nn.Dense(64, activation="relu"),
            gluon.nn.Dense(10),
        )
    return net


def train(net: gluon.HybridBlock, x: np.ndarray, y: np.ndarray, epochs: int = 8) -> None:
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 3e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            with autograd.record():
                loss = loss_fn(net(mx.nd.array(x[idx])), mx.nd.array(y[idx]))
            loss.backward()
            trainer.step(len(idx))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the int8 model goes")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="inc-mxnet-"))
    out = args.out or work / "int8"

    mx.random.seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    net = build()
    train(net, x_train, y_train)

    def accuracy(model: object) -> float:
        """The user's evaluation: top-1 on the held-out digits."""
        logits = model(mx.nd.array(x_test)).asnumpy()  # type: ignore[operator]
        return float((logits.argmax(axis=1) == y_test).mean())

    calib = [(x_train[i : i + 50], y_train[i : i + 50]) for i in range(0, 300, 50)]
    conf = PostTrainingQuantConfig(
        approach="static", accuracy_criterion=AccuracyCriterion(tolerable_loss=0.01)
    )
    q_model = quantization.fit(
        net, conf, calib_dataloader=calib, eval_func=accuracy, workspace=work / "tuning"
    )
    q_model.save(out)
    reloaded = load(out).model

    fp32_acc, int8_acc = accuracy(net), accuracy(reloaded)
    print(f"fp32 top-1 {fp32_acc:.4f}   int8 top-1 {int8_acc:.4f} (reloaded from {out})")
    print("per-op plan:", ", ".join(f"{r['op']}={r['activation']}" for r in q_model.op_report()))
    return 0 if int8_acc >= fp32_acc * 0.99 else 1


if __name__ == "__main__":
    sys.exit(main())
