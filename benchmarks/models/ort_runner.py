"""One ONNX corpus model: fp32, inc's default int8 and onnxruntime's own quantize_static, timed together."""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from benchmarks.models import measure
from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import ModelError
from tests.corpus.onnx_models import CorpusModel

THREADS = 2


class Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def session(model: str | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def inc_default(path: Path, calib: list[dict[str, np.ndarray]]) -> Any:
    """What a new user writes: the path, the default config, a calibration loader."""
    return quantization.fit(str(path), PostTrainingQuantConfig(), calib_dataloader=calib)


def peer(path: Path, calib: list[dict[str, np.ndarray]], tmp: Path) -> str:
    """onnxruntime's documented static flow: quant_pre_process, then quantize_static (QDQ)."""
    pre = tmp / "pre.onnx"
    quant_pre_process(str(path), str(pre))
    out = tmp / "peer_int8.onnx"
    quantize_static(str(pre), str(out), Reader(calib), quant_format=QuantFormat.QDQ)
    return str(out)


def failure(exc: BaseException) -> str:
    """One line for the table: the exception, its message, and where it was raised when it has none."""
    line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if not line:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        line = f"raised at {Path(frame.filename).name}:{frame.lineno} ({frame.line})"
    return f"{type(exc).__name__}: {line}"[:200]


def bench(model: CorpusModel, rounds: int, n_calib: int, n_eval: int) -> dict[str, Any]:
    row = measure.corpus_row(model.name, model)
    calib = model.batches("calib", n_calib, rich=True)
    evaluation = model.batches("eval", n_eval, rich=True)
    path = model.path()
    sessions: dict[str, ort.InferenceSession] = {"fp32": session(str(path))}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            try:
                q, secs, mem = measure.measured(lambda: inc_default(path, calib))
            except ModelError as exc:
                if "convert_version" not in str(exc):
                    raise
                # inc refuses opsets without QuantizeLinear and tells the user to convert: do as told
                row["inc_note"] = failure(exc)
                converted = Path(tmp) / "opset13.onnx"
                onnx.save(
                    onnx.version_converter.convert_version(onnx.load(str(path)), 13), str(converted)
                )
                q, secs, mem = measure.measured(lambda: inc_default(converted, calib))
            sessions["inc"] = session(q.model.SerializeToString())
            row.update(measure.inc_columns(q, secs, mem))
            row["inc_ops"] = _plan_summary(q)
        except Exception as exc:
            row["inc_error"] = failure(exc)
            traceback.print_exc()
        try:
            out, secs, mem = measure.measured(lambda: peer(path, calib, Path(tmp)))
            sessions["peer"] = session(out)
            row.update(peer_s=secs, peer_mb=mem)
        except Exception as exc:
            row["peer_error"] = failure(exc)
        outs = {k: [s.run(None, f) for f in evaluation] for k, s in sessions.items()}
        for k in sessions:
            row[f"{k}_fid"] = model.fidelity(outs["fp32"], outs[k])
        feed = evaluation[0]
        lat = measure.interleaved(
            {k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, rounds
        )
        for k, v in lat.items():
            row[f"{k}_ms"] = v * 1e3
    return row


def _plan_summary(q: Any) -> str:
    try:
        ops = q.plan.quantized_ops()
        counts: dict[str, int] = {}
        for n in q.model.graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        return f"{len(ops)} ops int8; QLinear/QDQ nodes: " + ", ".join(
            f"{k} {v}"
            for k, v in sorted(counts.items())
            if k.startswith(("QLinear", "Quantize", "Dequantize", "MatMulInteger", "ConvInteger"))
        )
    except Exception as exc:
        return failure(exc)


def producer(path: Path) -> str:
    m = onnx.load(str(path), load_external_data=False)
    return f"{m.producer_name} {m.producer_version}".strip()
