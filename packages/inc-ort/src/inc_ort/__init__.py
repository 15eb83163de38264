"""inc for ONNX Runtime: the ``onnxrt`` backend, drop-in ``quantize_static`` / ``quantize_dynamic``
with onnxruntime's signatures, and the ``inc-ort`` command line."""

from __future__ import annotations

from importlib import metadata

from .backend import OrtBackend
from .dropin import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from .quantizer import IncQDQQuantizer, IncQOperatorQuantizer, QuantizerSpec


def _version() -> str:
    # the same module ships in two distributions: inc-ort (onnxruntime) and inc-ort-gpu
    # (onnxruntime-gpu); only one of them may be installed
    for distribution in ("inc-ort", "inc-ort-gpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "0+unknown"  # imported from a source tree that was never installed


__version__ = _version()

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
