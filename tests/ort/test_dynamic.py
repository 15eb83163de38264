"""Dynamic quantization (QIntegerOps) and plans that mix static and dynamic ops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper

from inc_core import PostTrainingQuantConfig, quantization, scheme
from inc_core.quantization import prepare_session
from inc_ort.backend import OrtBackend

from .conftest import top1


def test_dynamic_cnn_quantizes_gemms_and_keeps_convs_fp32(cnn, digits, fp32_top1):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="dynamic", guards=False))
    counts = Counter(n.op_type for n in q.model.graph.node)
    assert counts["MatMulInteger"] == 2 and counts["DynamicQuantizeLinear"] == 2
    assert counts["Conv"] == 3 and counts["ConvInteger"] == 0
    assert set(q.plan.quantized_ops()) == {"fc0", "fc1"}
    assert top1(q.model, digits) >= fp32_top1 * 0.99


def test_dynamic_weights_use_inc_core_scheme(cnn):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="dynamic", guards=False))
    inits = {i.name: numpy_helper.to_array(i) for i in q.model.graph.initializer}
    w = numpy_helper.to_array(next(i for i in cnn.graph.initializer if i.name == "fc0.weight")).T
    ref = scheme.weight_qparams(w, granularity="per_channel", axis=1, convention="onnxrt")
    matmul = next(
        n for n in q.model.graph.node if n.op_type == "MatMulInteger" and "fc0" in n.input[1]
    )
    np.testing.assert_array_equal(inits[matmul.input[1]], scheme.quantize(w, ref))


def test_auto_with_calibration_is_static(cnn, calib):
    q = quantization.fit(cnn, PostTrainingQuantConfig(), calib_dataloader=calib)
    assert {op.approach for op in q.plan.ops.values()} == {"static"}


def test_a_plan_mixing_static_convs_and_dynamic_gemms(cnn, calib, digits, fp32_top1):
    """approach='auto' lets tuning choose per op: the backend builds any such mix."""
    conf = PostTrainingQuantConfig(approach="auto")
    session = prepare_session(cnn, conf, calib)
    plan = session.default_plan
    dynamic = {
        s.op.name: next(c for c in s.choices if c.approach == "dynamic")
        for s in session.spaces
        if s.op.type == "Gemm"
    }
    mixed = plan.with_ops(dynamic)
    model = session.build(mixed)
    counts = Counter(n.op_type for n in model.graph.node)
    assert counts["MatMulInteger"] == 2 and counts["QuantizeLinear"] > 0
    assert top1(model, digits) >= fp32_top1 * 0.99
    assert isinstance(OrtBackend().predict(model, digits.x_test[:4]), np.ndarray)
    onnx.checker.check_model(model)
