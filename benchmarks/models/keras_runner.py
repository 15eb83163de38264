"""One Keras corpus model: fp32 Keras, inc's default int8 and TensorFlow's own full-int8 TFLite
flow, timed together in this process.

Run on its own (``python -m benchmarks.models.keras_runner [--only NAME]``), it prints one JSON
row per model, the same fields as ort_runner/torch_runner; bench.py runs it in a subprocess so
TensorFlow's thread pools never share a process with torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.models import measure  # noqa: E402
from benchmarks.models.ort_runner import failure  # noqa: E402
from inc_core import PostTrainingQuantConfig, quantization  # noqa: E402
from inc_tf.runtime import TfLiteModel, _interpreter_class  # noqa: E402
from tests.corpus.keras_models import MODELS, KerasCorpusModel  # noqa: E402

THREADS = 2


def peer(model: Any, calib: list[np.ndarray]) -> bytes:
    """TensorFlow's documented full-integer post-training quantization: from_keras_model,
    Optimize.DEFAULT, a representative dataset (the calibration samples, one at a time, as the
    guide writes it) and TFLITE_BUILTINS_INT8 ops; float input and output, as inc's model."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative_dataset() -> Any:
        for batch in calib:
            for sample in batch:
                yield [sample[None]]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


class Interpreted:
    """A TFLite flatbuffer on the same interpreter class and thread count as inc's model."""

    def __init__(self, content: bytes) -> None:
        self.interpreter = _interpreter_class()(model_content=content, num_threads=THREADS)
        self.shape: tuple[int, ...] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        index = it.get_input_details()[0]["index"]
        if x.shape != self.shape:
            it.resize_tensor_input(index, x.shape, strict=False)
            it.allocate_tensors()
            self.shape = x.shape
        it.set_tensor(index, x)
        it.invoke()
        return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


def int8_kernels(content: bytes) -> str:
    """How many conv kernels of a TFLite model read int8 (what runs int8, not what was planned)."""
    it = _interpreter_class()(model_content=content)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    counts: dict[str, list[int]] = {}
    for op in it._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD"):
            int8 = tensors[op["inputs"][0]]["dtype"] == np.int8
            counts.setdefault(op["op_name"], [0, 0])[0 if int8 else 1] += 1
    return ", ".join(f"{k} {a} int8 / {b} float" for k, (a, b) in sorted(counts.items()))


def bench(name: str, rounds: int, n_calib: int = 4, n_eval: int = 4) -> dict[str, Any]:
    model: KerasCorpusModel = MODELS[name]
    row = measure.corpus_row(name, model)
    fp32 = model.load()
    calib = model.batches("calib", n_calib, rich=True)
    evaluation = model.batches("eval", n_eval, rich=True)
    # fp32 as inc's speed guard times it: the Keras model in one tf.function
    graph = tf.function(lambda x: fp32([x], training=False), reduce_retracing=True)
    variants: dict[str, Any] = {"fp32": lambda x: np.asarray(graph(x))}
    try:
        q, secs, mem = measure.measured(
            lambda: quantization.fit(fp32, PostTrainingQuantConfig(), calib_dataloader=calib)
        )
        native = q.model
        variants["inc"] = TfLiteModel(
            native.content, native.spec, native.input_names, num_threads=THREADS
        )
        row.update(measure.inc_columns(q, secs, mem))
        row["inc_ops"] = (
            f"{len(q.plan.quantized_ops())} ops int8; kernels: {int8_kernels(native.content)}"
        )
    except Exception as exc:
        row["inc_error"] = failure(exc)
        traceback.print_exc()
    try:
        content, row["peer_s"], row["peer_mb"] = measure.measured(lambda: peer(fp32, calib))
        variants["peer"] = Interpreted(content)
        row["peer_ops"] = int8_kernels(content)
    except Exception as exc:
        row["peer_error"] = failure(exc)
        traceback.print_exc()
    outs = {k: [np.asarray(run(x)) for x in evaluation] for k, run in variants.items()}
    for k in variants:
        row[f"{k}_fid"] = model.fidelity(outs["fp32"], outs[k])
    x = evaluation[0]
    lat = measure.interleaved({k: (lambda run=run: run(x)) for k, run in variants.items()}, rounds)
    for k, v in lat.items():
        row[f"{k}_ms"] = v * 1e3
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calib", type=int, default=4)
    parser.add_argument("--eval", type=int, default=4)
    parser.add_argument("--only", nargs="*", default=[])
    args = parser.parse_args()
    # TensorFlow's pools are sized before its first op: the same 2 threads as the other runners
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for name in MODELS:
        if args.only and name not in args.only:
            continue
        try:
            row = bench(name, args.rounds, args.calib, args.eval)
        except Exception as exc:
            row = {"model": name, "package": MODELS[name].package, "inc_error": failure(exc)}
            traceback.print_exc()
        print("ROW " + json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
