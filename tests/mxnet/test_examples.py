"""The examples/ scripts for this package run as a user runs them (a subprocess, real data from
scikit-learn, nothing downloaded) and end with an int8 model saved and checked."""

from __future__ import annotations

import json

from tests.examples_runner import run_example


def test_gluon_example_tunes_and_saves_int8(tmp_path):
    out = run_example("mxnet_gluon.py", tmp_path / "int8")
    assert "int8 top-1" in out
    manifest = json.loads((tmp_path / "int8" / "inc.json").read_text())
    assert manifest["backend"] == "mxnet" and manifest["report"]["tuning"]["chosen"] is not None
