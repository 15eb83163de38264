"""The spec's generic op type names -> ONNX op types, as plain data (no onnx).

``OrtBackend.op_type_aliases`` is read from here: the registry loads the backend class for
every ``fit`` whatever the model's framework, and must not import onnx to do it
(tests/ort/test_lazy_import.py checks every name is an op type ``graph`` quantizes).
"""

from __future__ import annotations

GENERIC_ALIASES: dict[str, tuple[str, ...]] = {
    "Linear": ("MatMul", "Gemm"),
    "Conv2d": ("Conv",),
    "Dense": ("MatMul", "Gemm"),
}
