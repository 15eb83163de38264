"""The examples/ scripts for this package run as a user runs them (a subprocess, real data from
scikit-learn, nothing downloaded) and end with an int8 model saved and checked."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.examples_runner import EXAMPLES, run_example


def test_onnx_tuning_example_runs_with_inc_ort_alone(tmp_path):
    out = run_example("onnx_tuning.py", tmp_path / "int8")
    assert "int8 top-1" in out and "tuning trials (* = chosen)" in out and "per-op plan" in out
    manifest = json.loads((tmp_path / "int8" / "inc.json").read_text())
    assert manifest["backend"] == "onnxrt" and manifest["report"]["tuning"]["chosen"] is not None
    for row in manifest["op_report"]:
        assert row["op"] in out


def test_quickstart_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "int8" in result.stdout
