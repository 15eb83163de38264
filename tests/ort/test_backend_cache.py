"""What OrtBackend keeps between the steps of one fit: one serialization of each model, its
session, and the calibration session the per-op diagnosis reads the fp32 outputs from."""

from __future__ import annotations

import numpy as np
import onnx

from inc_core import PostTrainingQuantConfig
from inc_core.guards import op_sqnr
from inc_core.quantization import prepare_session
from inc_ort.backend import OrtBackend

from . import models


def test_the_diagnosis_reads_the_calibration_session_and_gets_a_fresh_sessions_outputs(
    cnn: onnx.ModelProto, calib: list[tuple[np.ndarray, np.ndarray]], digits: models.Digits
) -> None:
    """Calibration keeps its session of the fp32 model (it exposes the ops' outputs too); the
    fp32 side of the diagnosis runs its samples through it, once, and reads the values a new
    session gives, bit for bit; the int8 side and sqnr_db are those of a backend that keeps
    nothing."""
    session = prepare_session(cnn, PostTrainingQuantConfig(), calib)
    backend, fp32, plan = session.backend, session.model, session.default_plan
    assert isinstance(backend, OrtBackend)
    ranges = session.ranges_for(plan)
    kept = backend._exposing
    assert kept is not None and kept.model is fp32
    ops = plan.quantized_ops()
    x = digits.x_test[:4]
    reused = backend.op_outputs(fp32, x, ops)
    assert backend._exposing is None  # handed out once: no fp32 session held past the diagnosis
    fresh = OrtBackend()
    expected = fresh.op_outputs(fp32, x, ops)
    assert reused.keys() == expected.keys() and len(reused) == len(ops)
    for op in ops:
        np.testing.assert_array_equal(reused[op], expected[op], err_msg=op)
    int8 = backend.quantize(fp32, plan, ranges)
    backend.predict(int8, x)  # the int8 model's bytes and session are cached now
    assert op_sqnr(backend, fp32, int8, x, ops, reused) == op_sqnr(fresh, fp32, int8, x, ops)


def test_a_model_edited_after_its_session_was_built_gets_a_new_session(
    cnn: onnx.ModelProto, digits: models.Digits
) -> None:
    """Sessions and serialized bytes are kept per model object, checked against the sizes of
    its graph: a graph output added to the same object is served by a new session."""
    backend = OrtBackend()
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    x = digits.x_test[:4]
    first = backend.session(model)
    assert backend.session(model) is first
    assert isinstance(backend.predict(model, x), np.ndarray)  # one output
    hidden = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(hidden))
    second = backend.session(model)
    assert second is not first
    outputs = backend.predict(model, x)
    assert isinstance(outputs, list) and len(outputs) == 2
    # the same bytes as a serialization of the edited model: the cached ones were dropped
    assert backend._serialized(model) == model.SerializeToString()


def test_a_new_model_object_never_gets_anothers_session(
    cnn: onnx.ModelProto, digits: models.Digits
) -> None:
    """A copy with other weights (same graph sizes) is another object: its own session."""
    backend = OrtBackend()
    x = digits.x_test[:4]
    reference = backend.predict(cnn, x)
    other = onnx.ModelProto()
    other.CopyFrom(cnn)
    weight = next(t for t in other.graph.initializer if len(t.dims) == 4)
    array = onnx.numpy_helper.to_array(weight) * 2.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), weight.name))
    assert backend.session(other) is not backend.session(cnn)
    assert not np.array_equal(backend.predict(other, x), reference)


def test_fit_leaves_the_users_model_as_it_was(
    cnn: onnx.ModelProto, calib: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Nothing kept for the fit is written back into the user's ModelProto."""
    from inc_core import quantization

    user = onnx.ModelProto()
    user.CopyFrom(cnn)
    before = user.SerializeToString()
    q = quantization.fit(user, PostTrainingQuantConfig(), calib_dataloader=calib)
    assert q.report["op_diagnosis"]
    assert any("sqnr_db" in row for row in q.report["op_diagnosis"].values())
    assert user.SerializeToString() == before
