"""The examples/ scripts for this package run as a user runs them (a subprocess, real data from
scikit-learn, nothing downloaded) and end with an int8 model saved and checked."""

from __future__ import annotations

import json

from tests.examples_runner import run_example


def test_keras_fit_example_quantizes_with_the_callback(tmp_path):
    out = run_example("keras_qat.py", tmp_path / "int8")
    assert "int8 top-1" in out
    assert json.loads((tmp_path / "int8" / "inc.json").read_text())["backend"] == "tensorflow"
