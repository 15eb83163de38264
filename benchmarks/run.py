"""Run one package's benchmark and rebuild BENCHMARKS.md from every package's results.

Usage: ``python benchmarks/run.py <pkg>`` (ort, torch, tf, mxnet, models), or ``--collect`` to only
merge. Each ``benchmarks/<pkg>.py`` (``benchmarks/models/bench.py`` for the validated-model corpus)
times fp32, inc int8 and the peer's int8 in one process and writes ``benchmarks/results/<pkg>.md``;
this script stitches those into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ("models", "ort", "torch", "tf", "mxnet", "weight_only")
TITLES = {
    "models": "Validated models",
    "ort": "ONNX Runtime",
    "torch": "PyTorch",
    "tf": "TensorFlow / Keras",
    "mxnet": "MXNet",
    "weight_only": "Weight-only quantization",
}
# the corpus benchmark is a package of its own (runners per framework); the others are one file
SCRIPTS = {"models": HERE / "models" / "bench.py"}
# packages run as modules (relative imports)
MODULES = {"weight_only": "benchmarks.weight_only"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def collect() -> Path:
    sections = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run.py` from `benchmarks/results/*.md`; each table was timed in one",
        "process (fp32, inc int8 and the peer's int8 on the same inputs). Re-run one package with",
        "`./run-tests -e bench-<pkg>` (ort, torch, tf, mxnet; models for the real-model corpus).",
        "",
        f"Machine of the last collection: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
    ]
    for name in ORDER:
        path = RESULTS / f"{name}.md"
        if path.is_file():
            text = path.read_text().strip()
            if text.startswith("# "):  # a result file's own headings sit one level down here
                text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
            else:
                text = f"## {TITLES[name]}\n\n{text}"
            sections += [text, ""]
    out = HERE.parent / "BENCHMARKS.md"
    out.write_text("\n".join(sections))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("package", nargs="?", help="ort, torch, tf, mxnet, models or weight_only (a bench-<pkg> env name works too)")
    parser.add_argument("--collect", action="store_true", help="only merge results into BENCHMARKS.md")
    args, rest = parser.parse_known_args()
    if args.package:
        args.package = args.package.removeprefix("bench-").replace("-", "_")
        if args.package not in ORDER:
            parser.error(f"unknown package {args.package!r}; choose from {', '.join(ORDER)}")
    if args.package and not args.collect:
        if args.package in MODULES:
            sys.path.insert(0, str(HERE.parent))
            sys.argv = [MODULES[args.package], *rest]
            runpy.run_module(MODULES[args.package], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [str(SCRIPTS.get(args.package, HERE / f"{args.package}.py")), *rest]
            runpy.run_path(sys.argv[0], run_name="__main__")
    print(f"wrote {collect()}")


if __name__ == "__main__":
    main()
