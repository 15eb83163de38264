"""inc for ONNX Runtime: the ``onnxrt`` backend, drop-in ``quantize_static`` / ``quantize_dynamic``
with onnxruntime's signatures, and the ``inc-ort`` command line."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them on first use
    from .backend import OrtBackend
    from .dropin import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from .quantizer import IncQDQQuantizer, IncQOperatorQuantizer, QuantizerSpec

# public names -> the module defining them, imported when first touched (PEP 562): they import
# onnx and onnxruntime, which the core's backend registry (importing inc_ort.backend to ask
# whether a torch or Keras model is ONNX's) must not pay for
_LAZY = {
    "OrtBackend": "backend",
    "CalibrationMethod": "dropin",
    "QuantFormat": "dropin",
    "QuantType": "dropin",
    "quantize_dynamic": "dropin",
    "quantize_static": "dropin",
    "IncQDQQuantizer": "quantizer",
    "IncQOperatorQuantizer": "quantizer",
    "QuantizerSpec": "quantizer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
