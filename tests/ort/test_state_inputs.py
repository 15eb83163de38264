"""Models with state inputs whose first axis is not the batch (a recurrent ``h`` shaped
``[1, 16]`` next to a ``[N, 32]`` signal, as torch.onnx exports silero-vad's ``h``/``c``): the
default flow holds calibration data out for its fidelity guard and must never slice a state."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inc_core import PostTrainingQuantConfig, quantization

F = TensorProto.FLOAT

# a 16-wide cell is too small for int8 to pay: the speed guard warns, which is not under test here
pytestmark = pytest.mark.filterwarnings("ignore::inc_core.errors.GuardWarning")


def recurrent_cell(features: int = 32, hidden: int = 16) -> onnx.ModelProto:
    """``y = tanh(x @ W + h @ U)`` over a stream of frames; the next state is y's mean over it.

    ``h`` is declared ``[1, hidden]`` (fixed), the way exporters declare an initial state; both
    MatMuls reduce over at least 16 products, so inc plans them int8."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (features, hidden)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.4, (hidden, hidden)).astype(np.float32), "U"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"], name="/cell/MatMul"),
        helper.make_node("MatMul", ["h", "U"], ["hu"], name="/cell/MatMul_1"),
        helper.make_node("Add", ["xw", "hu"], ["pre"], name="/cell/Add"),
        helper.make_node("Tanh", ["pre"], ["output"], name="/cell/Tanh"),
        helper.make_node("ReduceMean", ["output"], ["hn"], name="/cell/ReduceMean", axes=[0]),
    ]
    graph = helper.make_graph(
        nodes,
        "cell",
        [
            helper.make_tensor_value_info("input", F, ["sequence_length", features]),
            helper.make_tensor_value_info("h", F, [1, hidden]),
        ],
        [
            helper.make_tensor_value_info("output", F, ["sequence_length", hidden]),
            helper.make_tensor_value_info("hn", F, [1, hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def frames(batches: int, per_batch: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t = np.arange(batches * per_batch, dtype=np.float32)[:, None]
    signal = np.sin(t / 5 + np.arange(32, dtype=np.float32)) + rng.normal(0, 0.1, (len(t), 32))
    x = signal.astype(np.float32).reshape(batches, per_batch, 32)
    h = rng.normal(0, 0.5, (batches, 1, 16)).astype(np.float32)
    return list(zip(x, h, strict=True))


def _as(form: str, x: np.ndarray, h: np.ndarray) -> Any:
    if form == "dict, state first":
        return {"h": h, "input": x}
    if form == "dict":
        return {"input": x, "h": h}
    return ((x, h), np.zeros(len(x)))  # ((inputs...), label)


@pytest.mark.parametrize("form", ["dict", "dict, state first", "tuple with label"])
def test_the_default_flow_never_slices_a_state_input(form):
    model = recurrent_cell()
    # 64-frame streams; the default calibration_sampling_size (100) falls inside the second one
    loader = [_as(form, x, h) for x, h in frames(4, 64)]
    q = quantization.fit(model, PostTrainingQuantConfig(), calib_dataloader=loader)
    fid = q.report["fidelity"]
    assert (fid["held_out"], fid["held_out_batches"], fid["held_out_samples"]) == (
        "beyond calibration",
        1,
        64,
    )
    assert fid["holds"]
    sess = ort.InferenceSession(q.model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x, h = frames(4, 64)[3]  # the held-out stream: ranges come from the same distribution
    got, want = sess.run(None, {"input": x, "h": h}), ref.run(None, {"input": x, "h": h})
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.isfinite(g).all()


def test_a_first_stream_longer_than_the_sampling_size_is_calibrated_on_whole():
    model = recurrent_cell()
    loader = [{"input": x, "h": h} for x, h in frames(3, 64)]
    conf = PostTrainingQuantConfig(calibration_sampling_size=[40])
    q = quantization.fit(model, conf, calib_dataloader=loader)
    assert q.report["fidelity"]["held_out"] == "beyond calibration"
    assert q.report["fidelity"]["held_out_samples"] == 64
