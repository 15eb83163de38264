"""``inc-ort quantize in.onnx out.onnx --calib data.npz [...]``: inc's quantization from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import IncError

from . import model_io
from .dropin import check_paths


def _recipe(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--recipe takes NAME=VALUE (VALUE as JSON), got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a bare word such as ENABLE_BASIC


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inc-ort", description="Quantize ONNX models with inc.")
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize in.onnx into out.onnx")
    q.add_argument("input", type=Path, help="fp32 model (.onnx)")
    q.add_argument("output", type=Path, help="where to write the int8 model (.onnx)")
    q.add_argument(
        "--calib",
        type=Path,
        help=".npz with one array per model input (by input name; first axis = samples)",
    )
    q.add_argument(
        "--approach",
        choices=("static", "dynamic", "auto"),
        default=None,
        help="default: static with --calib, else dynamic",
    )
    q.add_argument("--format", dest="quant_format", choices=("QDQ", "QOperator"), default="QDQ")
    q.add_argument("--batch-size", type=int, default=32)
    q.add_argument(
        "--sampling-size",
        type=int,
        default=100,
        help="calibration samples used (calibration_sampling_size)",
    )
    q.add_argument("--activation-type", choices=("uint8", "int8"), default=None)
    q.add_argument(
        "--per-tensor", action="store_true", help="per-tensor weights (default: per channel)"
    )
    q.add_argument("--algorithm", choices=("minmax", "kl", "percentile", "mse"), default=None)
    q.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NODE",
        help="keep this node (name or regex) fp32; repeatable",
    )
    q.add_argument(
        "--recipe",
        action="append",
        type=_recipe,
        default=[],
        metavar="NAME=VALUE",
        help="e.g. smooth_quant=true; repeatable",
    )
    q.add_argument(
        "--backend",
        default="default",
        help="default, onnxrt_cuda_ep, onnxrt_trt_ep, onnxrt_dnnl_ep, onnxrt_dml_ep",
    )
    q.add_argument("--device", default=None, help="cpu, gpu or npu (default: the backend's first)")
    q.add_argument(
        "--report",
        action="store_true",
        help="print each op: int8 or fp32, the kernel onnxruntime runs for it, its sqnr_db",
    )
    return p


def batches(path: Path, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if not arrays:
        raise IncError(f"{path} holds no arrays; save one array per model input with numpy.savez")
    count = min(len(a) for a in arrays.values())
    for start in range(0, count, batch_size):
        yield {name: a[start : start + batch_size] for name, a in arrays.items()}


def config(args: argparse.Namespace) -> PostTrainingQuantConfig:
    from inc_core.config import BACKEND_DEVICES

    approach = args.approach or ("static" if args.calib else "dynamic")
    tensor: dict[str, Any] = {}
    if args.activation_type:
        tensor.setdefault("activation", {})["dtype"] = [args.activation_type]
    if args.algorithm:
        tensor.setdefault("activation", {})["algorithm"] = [args.algorithm]
    if args.per_tensor:
        tensor["weight"] = {"granularity": ["per_tensor"]}
    types = ("Conv", "ConvTranspose", "MatMul", "Gemm")
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    device = args.device or BACKEND_DEVICES.get(args.backend, ("cpu",))[0]
    return PostTrainingQuantConfig(
        approach=approach,
        quant_format=args.quant_format,
        backend=args.backend,
        device=device,
        calibration_sampling_size=[args.sampling_size],
        op_type_dict={t: tensor for t in types} if tensor else None,
        op_name_dict={name: fp32 for name in args.exclude} or None,
        recipes=dict(args.recipe),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        check_paths(args.input, args.output)  # before anything is read: never lose the input
        conf = config(args)
        if conf.approach == "static" and args.calib is None:
            raise IncError("--approach static needs --calib data.npz")
        data = list(batches(args.calib, args.batch_size)) if args.calib else None
        q = quantization.fit(str(args.input), conf, calib_dataloader=data)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        written = model_io.save(q.model, args.output)
    except (IncError, ValueError, OSError) as exc:
        print(f"inc-ort: error: {exc}", file=sys.stderr)
        return 2
    quantized = q.plan.quantized_ops()
    print(
        f"wrote {', '.join(written)} to {args.output.parent}: {len(quantized)} of {len(q.plan.ops)} ops int8"
    )
    speed = q.report.get("speed", {})
    if "fp32_ms" in speed:
        print(
            f"batch {speed.get('batch')}: fp32 {speed['fp32_ms']:.2f} ms, "
            f"int8 {speed['int8_ms']:.2f} ms ({speed['fp32_ms'] / speed['int8_ms']:.2f}x)"
        )
    for row in q.report.get("fallback", []):
        print(f"kept in fp32: {row['op']} ({row['why']})")
    if args.report:
        print(op_table(q.op_report()))
    return 0


def op_table(rows: Sequence[dict[str, Any]]) -> str:
    """The op report as aligned text columns: op, type, approach, runs as, sqnr_db."""
    lines = [("op", "type", "approach", "runs as", "sqnr_db")]
    for row in rows:
        sqnr = row.get("sqnr_db")
        lines.append(
            (
                str(row["op"]),
                str(row["type"]),
                str(row["approach"]),
                str(row.get("runs_as") or "-"),
                "-" if sqnr is None else f"{sqnr:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
