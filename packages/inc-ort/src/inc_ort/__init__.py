"""inc for ONNX Runtime: the ``onnxrt`` backend, drop-in ``quantize_static`` / ``quantize_dynamic``
with onnxruntime's signatures, and the ``inc-ort`` command line."""

from __future__ import annotations

from .backend import OrtBackend
from .dropin import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from .quantizer import IncQDQQuantizer, IncQOperatorQuantizer, QuantizerSpec

__version__ = "0.1.0"

__all__ = [
    "CalibrationMethod",
    "IncQDQQuantizer",
    "IncQOperatorQuantizer",
    "OrtBackend",
    "QuantFormat",
    "QuantType",
    "QuantizerSpec",
    "quantize_dynamic",
    "quantize_static",
]
