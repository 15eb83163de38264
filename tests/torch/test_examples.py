"""The examples/ scripts for this package run as a user runs them (a subprocess, real data from
scikit-learn, nothing downloaded) and end with an int8 model saved and checked."""

from __future__ import annotations

import json

from tests.examples_runner import run_example


def test_lightning_trainer_example_trains_with_the_callback_and_saves_int8(tmp_path):
    out = run_example("lightning_qat.py", tmp_path / "int8", "--epochs", "4")
    assert "reloaded int8 model gives the same logits: True" in out
    assert json.loads((tmp_path / "int8" / "inc.json").read_text())["backend"] == "pytorch"


def test_hf_trainer_example_trains_with_the_callback_and_saves_int8(tmp_path):
    out = run_example("hf_trainer_qat.py", tmp_path / "saved")
    assert "the reloaded int8 model gives the same logits: True" in out
    assert (tmp_path / "saved" / "int8" / "inc.json").is_file()
    assert (tmp_path / "saved" / "config.json").is_file()  # transformers' own files too
