"""inc: quantize a trained model to int8, tuning op by op until it meets your accuracy goal.

The core is framework-free; ``pip install inc-ort`` / ``inc-torch`` / ``inc-tf`` / ``inc-mxnet``
adds a backend.
"""

from __future__ import annotations

from . import quantization
from .config import (
    AccuracyCriterion,
    PostTrainingQuantConfig,
    QuantizationAwareTrainingConfig,
    TuningCriterion,
)
from .model import QuantizedModel, load

__version__ = "0.1.0"

__all__ = [
    "AccuracyCriterion",
    "PostTrainingQuantConfig",
    "QuantizationAwareTrainingConfig",
    "QuantizedModel",
    "TuningCriterion",
    "load",
    "quantization",
]
