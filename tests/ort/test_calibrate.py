"""The exposing session calibration and the per-op diagnosis read intermediate tensors from."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from inc_ort import calibrate, model_io

from . import models


def _copy_exposing(model: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The tensors as a session of an explicit copy with them as outputs gives (unoptimized,
    as calibration reads them)."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(exposed.SerializeToString(), options, ["CPUExecutionProvider"])
    return list(sess.run(tensors, {"image": x}))


def _intermediates(model: onnx.ModelProto) -> list[str]:
    outputs = {o.name for o in model.graph.output}
    return [n.output[0] for n in model.graph.node if n.output[0] not in outputs]


def test_the_session_returns_every_intermediate_as_a_copy_exposing_it_would(
    cnn: onnx.ModelProto, digits: models.Digits
) -> None:
    """The model's bytes with only the extra outputs appended (no copy of its weights) give
    the tensors a session of a copy with those outputs gives, and the model stays as it was."""
    before = cnn.SerializeToString()
    tensors = _intermediates(cnn)
    final = cnn.graph.output[0].name
    x = digits.x_test[:16]
    # asked twice, and with the graph's own output: each tensor is one output of the session
    sess = calibrate.session(cnn, [*tensors, final, tensors[0]])
    assert [o.name for o in sess.get_outputs()] == [final, *tensors]
    values = sess.run(tensors, {"image": x})
    for name, value, expected in zip(tensors, values, _copy_exposing(cnn, tensors, x), strict=True):
        np.testing.assert_array_equal(value, expected, err_msg=name)
    assert cnn.SerializeToString() == before


def test_a_detached_model_gets_its_session_through_model_io(
    cnn: onnx.ModelProto, digits: models.Digits
) -> None:
    """A model whose data lives in inc's store (the >2 GB path) cannot be one proto's bytes:
    it is copied and handed to model_io, which points onnxruntime at the store."""
    detached = model_io.detach(cnn, min_bytes=1)  # the digits CNN's tensors are small
    if not model_io.detached(detached):
        pytest.fail("model_io.detach left every initializer in the proto")
    tensor = _intermediates(cnn)[0]
    x = digits.x_test[:4]
    value = calibrate.session(detached, [tensor]).run([tensor], {"image": x})[0]
    np.testing.assert_array_equal(value, _copy_exposing(cnn, [tensor], x)[0])


def test_type_inference_on_a_copy_without_weights_types_every_tensor_as_on_the_model(
    cnn: onnx.ModelProto,
) -> None:
    """The copy calibration infers tensor types on holds the weights' names, types and dims
    but not their bytes; inference types every tensor as on the whole model, which it leaves
    as it was."""
    from inc_ort import graph

    before = cnn.SerializeToString()
    light = model_io.for_inference(cnn, min_bytes=64)
    big = [t for t in cnn.graph.initializer if model_io.tensor_bytes(t) >= 64]
    assert big, "the digits CNN has weights of 64 bytes or more"
    assert light.ByteSize() < cnn.ByteSize() - sum(model_io.tensor_bytes(t) for t in big) // 2
    stubs = {t.name: t for t in light.graph.initializer}
    for tensor in big:
        stub = stubs[tensor.name]
        assert (stub.data_type, list(stub.dims)) == (tensor.data_type, list(tensor.dims))
        assert not stub.raw_data and stub.data_location == onnx.TensorProto.EXTERNAL
    assert graph.tensor_types(light) == graph.tensor_types(cnn)
    assert len(graph.tensor_types(cnn)) > len(cnn.graph.input) + len(cnn.graph.output)
    assert cnn.SerializeToString() == before


def test_calibration_holds_one_batch_of_tensors_at_a_time(
    cnn: onnx.ModelProto, calib: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    """A batch's exposed tensors are let go before the next batch runs (opennsfw exposes
    0.44 GB a batch): when a run starts, nothing the batches before gave is alive."""
    import weakref

    tensors = _intermediates(cnn)
    given: list[weakref.ref[np.ndarray]] = []
    alive_at_run: list[int] = []

    class Watched:
        def __init__(self, names: list[str]) -> None:
            self.session = calibrate.session(cnn, names)

        def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            alive_at_run.append(sum(ref() is not None for ref in given))
            values = self.session.run(names, feed)
            given.extend(weakref.ref(v) for v in values)
            return list(values)

    batches = [x for x, _ in calib]
    seen: list[str] = []
    count = calibrate.run_batches(cnn, batches, tensors, lambda n, v: seen.append(n), Watched)
    assert count == len(batches) and seen == tensors * len(batches)
    assert alive_at_run == [0] * len(batches)
