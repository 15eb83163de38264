"""The one place that imports onnxruntime and knows which releases inc-ort supports."""

from __future__ import annotations

from inc_core.errors import missing_dependency

#: onnxruntime releases this plugin is tested with (inclusive floor, exclusive ceiling).
SUPPORTED_ORT = ((1, 20), (1, 33))
#: onnx releases: 1.16 is the first with the opsets ORT 1.20 reads; 1.24 is untested.
SUPPORTED_ONNX = ((1, 16), (1, 24))

try:
    import onnx
except ImportError as exc:  # pragma: no cover - onnx is a hard dependency
    raise missing_dependency("inc-ort", "onnx", exc) from exc
try:
    import onnxruntime as ort
    from onnxruntime import quantization as ortq
except ImportError as exc:
    raise missing_dependency(
        "inc-ort",
        "onnxruntime",
        exc,
        extra="(GPU users: `pip uninstall -y inc-ort && pip install inc-ort-gpu`, never both)",
    ) from exc


def version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_supported() -> None:
    """Raise ``BackendNotAvailable`` naming the supported range when the runtime is outside it."""
    from inc_core.errors import BackendNotAvailable

    for name, module, (low, high) in (
        ("onnxruntime", ort, SUPPORTED_ORT),
        ("onnx", onnx, SUPPORTED_ONNX),
    ):
        found = version_tuple(module.__version__)
        if not low <= found < high:
            raise BackendNotAvailable(
                f"inc-ort supports {name} >={low[0]}.{low[1]},<{high[0]}.{high[1]}; "
                f"found {module.__version__}. Install a supported one: "
                f"pip install '{name}>={low[0]}.{low[1]},<{high[0]}.{high[1]}'"
            )


__all__ = ["SUPPORTED_ONNX", "SUPPORTED_ORT", "check_supported", "onnx", "ort", "ortq"]
