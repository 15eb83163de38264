"""The public names, and that importing the core pulls in no framework.

The framework check runs in a fresh interpreter: in this process other tests (or plugins)
may already have imported anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import inc_core

FRAMEWORKS = ("torch", "tensorflow", "keras", "onnxruntime", "onnx", "mxnet", "jax", "lightning")


def test_public_api_names():
    from inc_core import (
        AccuracyCriterion,
        PostTrainingQuantConfig,
        QuantizationAwareTrainingConfig,
        TuningCriterion,
        load,
        quantization,
    )
    from inc_core import config as config_module
    from inc_core.training import fit, prepare_compression

    assert callable(quantization.fit) and callable(load)
    assert callable(prepare_compression) and callable(fit)
    for cls in (
        AccuracyCriterion,
        PostTrainingQuantConfig,
        QuantizationAwareTrainingConfig,
        TuningCriterion,
    ):
        assert getattr(config_module, cls.__name__) is cls
        assert cls.__name__ in inc_core.__all__
    assert {"load", "quantization"} <= set(inc_core.__all__)


def test_inc_style_imports_work():
    """The spec's own import lines, with ``neural_compressor`` spelled ``inc_core``."""
    code = textwrap.dedent(
        """
        from inc_core import quantization
        from inc_core.config import PostTrainingQuantConfig, QuantizationAwareTrainingConfig
        from inc_core.config import AccuracyCriterion, TuningCriterion
        from inc_core import QuantizationAwareTrainingConfig as Q
        from inc_core.training import prepare_compression, fit
        assert Q is QuantizationAwareTrainingConfig
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_importing_inc_core_and_every_submodule_imports_no_framework():
    code = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        import inc_core
        names = sorted(
            m.name for m in pkgutil.walk_packages(inc_core.__path__, prefix="inc_core.")
        )
        for name in names:
            importlib.import_module(name)
        frameworks = {FRAMEWORKS!r}
        loaded = sorted(
            m for m in sys.modules if m.split(".")[0] in frameworks
        )
        print(json.dumps({{"modules": names, "frameworks": loaded}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for expected in (
        "inc_core.backend",
        "inc_core.config",
        "inc_core.data",
        "inc_core.model",
        "inc_core.quantization",
        "inc_core.rules",
        "inc_core.space",
        "inc_core.training",
    ):
        assert expected in found["modules"]
    assert found["frameworks"] == []
