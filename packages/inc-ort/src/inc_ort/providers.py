"""The spec's ONNX Runtime backend table: config ``backend`` -> execution provider."""

from __future__ import annotations

from inc_core.errors import BackendNotAvailable, DeviceNotAvailable

from ._runtime import ort

#: config backend -> (execution provider, the pip package whose onnxruntime build ships it)
EXECUTION_PROVIDERS: dict[str, tuple[str, str]] = {
    "default": ("CPUExecutionProvider", "onnxruntime"),
    "onnxrt_trt_ep": ("TensorrtExecutionProvider", "onnxruntime-gpu"),
    "onnxrt_cuda_ep": ("CUDAExecutionProvider", "onnxruntime-gpu"),
    "onnxrt_dnnl_ep": ("DnnlExecutionProvider", "onnxruntime-dnnl"),
    "onnxrt_dml_ep": ("DmlExecutionProvider", "onnxruntime-directml"),
}


def providers_for(backend: str) -> list[str]:
    """Providers for an InferenceSession, best first, always ending with the CPU fallback."""
    provider, _ = EXECUTION_PROVIDERS[backend]
    if backend == "onnxrt_trt_ep":
        return [provider, "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def check_provider(backend: str) -> None:
    """Raise a clear error when the installed onnxruntime lacks ``backend``'s provider."""
    provider, package = EXECUTION_PROVIDERS[backend]
    available = ort.get_available_providers()
    if provider not in available:
        raise BackendNotAvailable(
            f"backend={backend!r} needs onnxruntime's {provider}, which this onnxruntime build "
            f"({ort.__version__}, providers: {', '.join(available)}) does not have. "
            + (
                "Install the GPU build: pip uninstall -y inc-ort onnxruntime && pip install inc-ort-gpu"
                if package == "onnxruntime-gpu"
                else f"Install the build that ships it: pip uninstall -y onnxruntime && pip install {package}"
            )
        )
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        _check_cuda_device(backend)


def _check_cuda_device(backend: str) -> None:
    """A GPU build on a machine without a usable GPU fails late and vaguely; fail early instead."""
    try:
        import ctypes

        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        ok = cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
    except OSError:
        ok, count = False, ctypes.c_int(0)
    if not ok or count.value < 1:
        raise DeviceNotAvailable(
            f"backend={backend!r} (device='gpu') needs an NVIDIA GPU with its driver; "
            "none was found on this machine. Use backend='default' for the CPU."
        )
