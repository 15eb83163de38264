"""What each distribution declares: `pip install inc-ort` brings a runtime, never two; inc-ort-gpu
is inc-ort but for the runtime; inc-tf never installs a second TensorFlow next to the user's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

PACKAGES = Path(__file__).resolve().parents[2] / "packages"
ORT_RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
# distributions that all install the `tensorflow` module
TENSORFLOWS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-macos",
    "tf-nightly",
    "intel-tensorflow",
}


def project(name: str) -> dict[str, Any]:
    with (PACKAGES / name / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def by_name(requirements: list[str]) -> dict[str, str]:
    return {requirement_name(r): r for r in requirements}


def test_plain_inc_ort_brings_the_cpu_runtime_and_no_extra_adds_the_gpu_one():
    meta = project("inc-ort")["project"]
    deps = by_name(meta["dependencies"])
    assert "onnxruntime" in deps and "onnxruntime-gpu" not in deps
    for extra, requirements in meta.get("optional-dependencies", {}).items():
        assert not ORT_RUNTIMES & set(by_name(requirements)), (
            f"extra [{extra}] adds a second runtime"
        )


def test_inc_ort_gpu_is_inc_ort_with_the_gpu_runtime():
    cpu = project("inc-ort")
    gpu = project("inc-ort-gpu")
    cpu_deps, gpu_deps = (
        by_name(cpu["project"]["dependencies"]),
        by_name(gpu["project"]["dependencies"]),
    )
    assert "onnxruntime" not in gpu_deps
    # the same supported range for both runtimes
    assert gpu_deps.pop("onnxruntime-gpu").replace("onnxruntime-gpu", "") == cpu_deps.pop(
        "onnxruntime"
    ).replace("onnxruntime", "")
    assert gpu_deps == cpu_deps
    for key in ("version", "requires-python", "scripts", "entry-points"):
        assert gpu["project"].get(key) == cpu["project"].get(key), key
    # the wheel ships inc-ort's own module, not a copy that could drift
    wheel = gpu["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"] == {"../inc-ort/src/inc_ort": "inc_ort"}
    assert (PACKAGES / "inc-ort-gpu" / "../inc-ort/src/inc_ort/__init__.py").is_file()


def test_inc_tf_never_requires_a_tensorflow_distribution_by_default():
    meta = project("inc-tf")["project"]
    assert not TENSORFLOWS & set(by_name(meta["dependencies"]))
    for extra, requirements in meta.get("optional-dependencies", {}).items():
        found = TENSORFLOWS & set(by_name(requirements))
        assert len(found) <= 1, f"extra [{extra}] installs two TensorFlows: {found}"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in PACKAGES.iterdir() if (p / "pyproject.toml").is_file())
)
def test_every_package_reads_its_version_from_its_metadata(name):
    module = "inc_ort" if name == "inc-ort-gpu" else name.replace("-", "_")
    init = (
        PACKAGES / ("inc-ort" if name == "inc-ort-gpu" else name) / "src" / module / "__init__.py"
    ).read_text()
    assert re.search(r"__version__\s*=\s*['\"]\d+\.\d", init) is None, (
        "a version literal drifts from pyproject"
    )
    assert "metadata.version(" in init
    assert f'"{name}"' in init, f"{module}.__version__ is not read from the {name} distribution"


def test_the_report_extra_brings_matplotlib_and_the_core_needs_numpy_only():
    meta = project("inc-core")["project"]
    assert [requirement_name(r) for r in meta["dependencies"]] == ["numpy"]
    assert "matplotlib" in by_name(meta["optional-dependencies"]["report"])


def test_inc_core_version_is_the_installed_distributions():
    from importlib import metadata

    import inc_core

    assert inc_core.__version__ == metadata.version("inc-core")
