"""``tox -e pip-ort``: a fresh environment where only ``pip install packages/inc-core[report]
packages/inc-ort`` (plus scikit-learn for the data and pytest) was run, as an ONNX-only CPU user
does. The plain install must bring one ONNX runtime and let a model be quantized with tuning."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(autouse=True)
def only_the_plain_install() -> None:
    # tox runs this file only in its pip-ort env, a venv holding inc-core and inc-ort alone;
    # there the install must be that plain (fail, never skip), and a `pytest tests/` run in a
    # development venv with every framework has no plain install to check
    plain = installed("inc-ort") and not installed("torch")
    if os.environ.get("TOX_ENV_NAME") == "pip-ort":
        assert plain, "tox -e pip-ort must hold inc-core and inc-ort alone (torch is installed)"
    elif not plain:
        found = "torch is installed" if installed("torch") else "inc-ort is not installed"
        pytest.skip(
            f"checks a plain `pip install inc-ort` venv and {found} here; tox -e pip-ort "
            "builds that venv (inc-core and inc-ort alone) and fails there instead of skipping"
        )


def test_the_plain_install_brings_the_cpu_runtime_and_only_it():
    assert installed("onnxruntime") and installed("onnx")
    assert not installed("onnxruntime-gpu")
    for framework in ("torch", "tensorflow", "mxnet"):
        assert importlib.util.find_spec(framework) is None, framework
    # installed from the package, not an editable checkout
    direct = metadata.distribution("inc-ort").read_text("direct_url.json") or "{}"
    assert not json.loads(direct).get("dir_info", {}).get("editable", False)
    import inc_ort

    assert inc_ort.__version__ == metadata.version("inc-ort")


def test_an_onnx_model_is_quantized_with_tuning_and_reported(tmp_path):
    out = tmp_path / "int8"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "onnx_tuning.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((out / "inc.json").read_text())
    assert manifest["report"]["tuning"]["trials"][0]["trial"] == "fp32"
    assert "per-op plan" in result.stdout
    if (
        "report.html" in manifest["files"]
    ):  # written by QuantizedModel.save once it calls the report
        assert "<svg" in (out / "report.html").read_text()  # inc-core[report] brings matplotlib
