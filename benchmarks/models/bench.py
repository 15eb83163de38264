"""Benchmark every corpus model: fp32, inc's default int8, the framework's own quantizer.

Writes benchmarks/results/models.md. Run: ``python benchmarks/run.py models [--rounds N]
[--only NAME ...]``; each model runs in this one process, its three variants interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# run through benchmarks/run.py, sys.path[0] is benchmarks/, whose torch.py would shadow torch
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

from benchmarks.models import ort_runner  # noqa: E402
from tests.corpus import onnx_models  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "models.md"


def torch_rows(rounds: int, only: set[str]) -> list[dict[str, Any]]:
    try:
        from benchmarks.models import torch_runner
    except ImportError as exc:  # the env has no torch: say so in the table
        return [{"model": "torch models", "inc_error": f"skipped: {exc}"}]
    return [
        torch_runner.bench(name, rounds) for name in torch_runner.MODELS if not only or name in only
    ]


def keras_rows(rounds: int, only: set[str], n_calib: int, n_eval: int) -> list[dict[str, Any]]:
    """The Keras models' rows, measured by keras_runner in a subprocess: TensorFlow's thread
    pools then never run beside torch's and onnxruntime's in one process."""
    import subprocess
    from importlib import util

    from tests.corpus import keras_models

    names = [name for name in keras_models.MODELS if not only or name in only]
    if not names:
        return []
    if util.find_spec("tensorflow") is None:
        return [{"model": n, "inc_error": "skipped: tensorflow is not installed"} for n in names]
    command = [sys.executable, "-m", "benchmarks.models.keras_runner", "--rounds", str(rounds)]
    command += ["--calib", str(n_calib), "--eval", str(n_eval), "--only", *names]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    rows = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if not rows:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"model": n, "inc_error": f"keras_runner failed: {tail}"[:200]} for n in names]
    return rows


def fmt_ms(row: dict[str, Any], key: str) -> str:
    if f"{key}_error" in row:
        return "failed: " + row[f"{key}_error"]
    if f"{key}_ms" not in row:
        return "-"
    ms = row[f"{key}_ms"]
    return f"{ms:.2f}" if key == "fp32" else f"{ms:.2f} ({row['fp32_ms'] / ms:.2f}x)"


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | source package | exporter | task | batch | fp32 ms | inc ms (speed-up) | peer ms (speed-up) "
        "| fidelity metric | fidelity fp32 / inc / peer | quant. s inc / peer | peak RSS +MB inc / peer |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r.get('package', '')} | {r.get('exporter', '')} | {r.get('task', '')} | {r.get('batch', '')} "
            f"| {fmt_ms(r, 'fp32')} | {fmt_ms(r, 'inc')} | {fmt_ms(r, 'peer')} | {r.get('metric', '')} "
            f"| {fmt(r.get('fp32_fid'), '.3f')} / {fmt(r.get('inc_fid'), '.3f')} / {fmt(r.get('peer_fid'), '.3f')} "
            f"| {fmt(r.get('inc_s'), '.1f')} / {fmt(r.get('peer_s'), '.1f')} | {fmt(r.get('inc_mb'), '.0f')} / {fmt(r.get('peer_mb'), '.0f')} |"
        )
    return "\n".join(lines)


def guards(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if "inc_speed" in r or "inc_fallback" in r:
            fallback = r.get("inc_fallback") or []
            out.append(
                f"- {r['model']}: speed {json.dumps(r.get('inc_speed'))}; fallback {len(fallback)} ops"
                + (
                    f" ({', '.join(sorted({str(f.get('why')) for f in fallback}))})"
                    if fallback
                    else ""
                )
                + (f"; {r['inc_ops']}" if r.get("inc_ops") else "")
                + _guard_time(r)
            )
    return "\n".join(out)


def _guard_time(r: dict[str, Any]) -> str:
    """What the guards cost, out of the whole fit the table's quantization time measures: the
    guards' own work -- the checks every model gets (fidelity comparison, speed rounds) and the
    repair only a model that failed one of them gets (fallback builds and their comparisons or
    rounds) -- and apart from it the per-op diagnosis, which fit measures with guards=False too."""
    total, diagnosis = r.get("inc_guard_s"), r.get("inc_diagnosis_s") or 0.0
    if total is None or not r.get("inc_s"):
        return ""
    own, repair = total - diagnosis, r.get("inc_repair_s") or 0.0
    checks = own - repair
    return (
        f"; guards {own:.2f} s = {100 * own / r['inc_s']:.0f}% of the {r['inc_s']:.2f} s"
        f" quantization: checks {checks:.2f} s = {100 * checks / r['inc_s']:.0f}%, repair"
        f" {repair:.2f} s = {100 * repair / r['inc_s']:.0f}% (+ per-op diagnosis"
        f" {diagnosis:.2f} s = {100 * diagnosis / r['inc_s']:.0f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (median)")
    parser.add_argument("--calib", type=int, default=4, help="calibration batches per model")
    parser.add_argument(
        "--eval", type=int, default=4, help="fidelity batches per model (not the calibration ones)"
    )
    parser.add_argument("--only", nargs="*", default=[], help="model names to run (default: all)")
    args = parser.parse_args()
    only = set(args.only)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for model in onnx_models.MODELS.values():
        if only and model.name not in only:
            continue
        missing = [tool for tool in model.needs if shutil.which(tool) is None]
        if missing:
            rows.append(
                {
                    "model": model.name,
                    "package": model.package,
                    "inc_error": f"skipped: needs {', '.join(missing)}",
                }
            )
            continue
        print(f"[{time.perf_counter() - start:6.0f}s] {model.name} ...", flush=True)
        row = ort_runner.bench(model, args.rounds, args.calib, args.eval)
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    rows += torch_rows(args.rounds, only)
    rows += keras_rows(args.rounds, only, args.calib, args.eval)
    total = time.perf_counter() - start
    text = [
        "# Validated models (real pretrained models from PyPI wheels)",
        "",
        "Written by `benchmarks/models/bench.py` (`./run-tests -e bench-models`). Each model's fp32, inc-default",
        "(`quantization.fit(model, PostTrainingQuantConfig(), calib_dataloader=...)`) and peer int8 ran in one",
        f"process; latency = median of {args.rounds} interleaved rounds, {ort_runner.THREADS} intra-op threads (torch:"
        " torch.set_num_threads(2)). Peer: onnxruntime `quant_pre_process` + `quantize_static` (QDQ, defaults) for",
        "ONNX; torch.ao FX `prepare_fx`/`convert_fx` with `get_default_qconfig_mapping('x86')` for torch;",
        "for Keras, TensorFlow's full-integer TFLite flow (`TFLiteConverter.from_keras_model`, `Optimize.DEFAULT`,",
        "a representative dataset, `TFLITE_BUILTINS_INT8`; same interpreter and 2 threads as inc's model).",
        f"Fidelity is measured on {args.eval} held-out batches against the fp32 outputs (1.0 = identical).",
        "Peak memory: growth of the process's peak RSS (Linux VmHWM, reset before each quantization) over RSS before it.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; whole run {total:.0f} s.",
        "",
        table(rows),
        "",
        "Notes:",
        "",
        "\n".join(
            f"- {r['model']}: inc first said: {r['inc_note']}; the row is after that conversion"
            for r in rows
            if r.get("inc_note")
        )
        or "- none",
        "",
        "inc's default guards (`q.report['speed']`, `q.report['fallback']`):",
        "",
        guards(rows) or "- (no report keys yet)",
        "",
    ]
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text("\n".join(text))
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
