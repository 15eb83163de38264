"""inc: quantize a trained model to int8, tuning op by op until it meets your accuracy goal.

The core is framework-free; ``pip install inc-ort`` / ``inc-torch`` / ``inc-tf`` / ``inc-mxnet``
adds a backend.
"""

from __future__ import annotations

from importlib import metadata

from . import quantization
from .config import (
    AccuracyCriterion,
    PostTrainingQuantConfig,
    QuantizationAwareTrainingConfig,
    TuningCriterion,
)
from .model import QuantizedModel, load

try:  # one source of truth: the version in packages/inc-core/pyproject.toml
    __version__ = metadata.version("inc-core")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AccuracyCriterion",
    "PostTrainingQuantConfig",
    "QuantizationAwareTrainingConfig",
    "QuantizedModel",
    "TuningCriterion",
    "load",
    "quantization",
]
