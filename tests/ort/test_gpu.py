"""Execution providers that need hardware: run where it exists, skip with the reason elsewhere."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import BackendNotAvailable, DeviceNotAvailable

from .conftest import top1


def _cuda_usable() -> str | None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDAExecutionProvider (GPU users install inc-ort-gpu instead of inc-ort)"
    from inc_ort.providers import check_provider

    try:
        check_provider("onnxrt_cuda_ep")
    except (BackendNotAvailable, DeviceNotAvailable) as exc:
        return str(exc)
    return None


@pytest.mark.gpu
def test_cuda_execution_provider_path(cnn, calib, evaluation, digits, fp32_top1):
    reason = _cuda_usable()
    if reason:
        pytest.skip(f"needs an NVIDIA GPU with onnxruntime-gpu: {reason}")
    from inc_ort.backend import OrtBackend

    conf = PostTrainingQuantConfig(approach="static", backend="onnxrt_cuda_ep", device="gpu")
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert top1(q.model, digits) >= fp32_top1 * 0.99
    backend = OrtBackend()
    backend.config_backend = "onnxrt_cuda_ep"
    assert backend.session(q.model).get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.gpu
def test_tensorrt_forces_qdq_pairs_and_symmetric_int8(cnn, calib):
    reason = _cuda_usable()
    if not reason and "TensorrtExecutionProvider" not in ort.get_available_providers():
        reason = "this onnxruntime build has no TensorrtExecutionProvider"
    if reason:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT and onnxruntime-gpu: {reason}")
    conf = PostTrainingQuantConfig(approach="static", backend="onnxrt_trt_ep", device="gpu")
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    weights = {"conv1.weight", "conv2.weight"}
    assert weights <= {n.input[0] for n in q.model.graph.node if n.op_type == "QuantizeLinear"}
    assert {op.activation.dtype for op in q.plan.ops.values() if op.activation} == {"int8"}


def test_tensorrt_graph_layout_is_built_without_a_gpu(cnn, calib):
    """The TensorRT-required QDQ layout is graph work: check it here, run it where TRT exists."""
    import numpy as np
    from onnx import numpy_helper

    from inc_core.rules import build_space, default_plan
    from inc_ort.backend import OrtBackend

    conf = PostTrainingQuantConfig(approach="static")
    backend = OrtBackend()
    backend.config_backend = "onnxrt_trt_ep"  # what check_config sets once the provider exists
    native = backend.load_model(cnn, conf)
    spaces = build_space(backend.ops(native), {"static": backend.capability("static", "gpu")}, conf)
    plan = default_plan(spaces, conf)
    q = backend.quantize(native, plan, backend.calibrate(native, [x for x, _ in calib], plan))
    q_inputs = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert {"conv1.weight", "conv2.weight"} <= q_inputs  # explicit Q/DQ pairs on weights
    assert not {"conv1_out", "conv2_out"} & q_inputs  # no Q after weighted ops
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    image_q = next(
        n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "relu0_out"
    )
    assert (
        inits[image_q.input[2]].dtype == np.int8 and inits[image_q.input[2]] == 0
    )  # symmetric int8
