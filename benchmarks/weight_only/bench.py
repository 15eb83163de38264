"""Run the weight-only benchmark's sections, write benchmarks/results/weight_only.md and the
weight-only section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "weight_only.md"
BENCHMARKS = HERE.parents[1] / "BENCHMARKS.md"
SECTIONS = ("mlp", "minilm", "lm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds (mlp)")
    parser.add_argument(
        "--lm-tokens", type=int, default=2048, help="perplexity text length in tokens"
    )
    parser.add_argument(
        "--lm-calib", type=int, default=16, help="calibration sequences of 256 tokens"
    )
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")

    runners: dict[str, Callable[[], list[dict[str, Any]]]] = {}
    if "mlp" in only:
        from . import mlp

        runners["mlp"] = lambda: mlp.run(args.rounds)
    if "minilm" in only:
        from . import minilm

        runners["minilm"] = minilm.run
    if "lm" in only:
        from . import causal_lm

        runners["lm"] = lambda: causal_lm.run(args.lm_tokens, args.lm_calib)
    old = report.read_sections(RESULTS)
    tables: dict[str, str] = {}
    start = time.perf_counter()
    for name, run in runners.items():
        print(f"weight_only: {name} ...", flush=True)
        t0 = time.perf_counter()
        tables[name] = report.section(name, run(), time.perf_counter() - t0, args)
        print(tables[name], flush=True)
    # sections not run this time keep their last results
    merged = {name: tables.get(name, old.get(name, "")) for name in SECTIONS}
    text = report.document(merged, _machine(), time.perf_counter() - start)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    report.splice(BENCHMARKS, text)
    print(f"wrote {RESULTS} and the weight-only section of {BENCHMARKS}")


def _machine() -> str:
    import onnxruntime
    import torch

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}"
    )
