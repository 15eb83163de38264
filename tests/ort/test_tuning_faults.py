"""Tuning faults on ONNX Runtime (issue 13): an eval_func that zeroes the ModelProto it gets
poisons no later trial, and a history never resumes for a model with other weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.errors import ConfigError

from .conftest import top1


def conf() -> PostTrainingQuantConfig:
    return PostTrainingQuantConfig(
        approach="static",
        quant_format="QDQ",
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.02),
        tuning_criterion=TuningCriterion(objective="accuracy", max_trials=4),
    )


class Top1:
    """Top-1 on the digits test split, then (``zero=True``) every initializer zeroed in place."""

    def __init__(self, x: np.ndarray, y: np.ndarray, zero: bool = False) -> None:
        self.x, self.y, self.zero = x, y, zero
        self.calls = 0

    def __call__(self, model: onnx.ModelProto) -> float:
        self.calls += 1
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        score = float(np.mean(sess.run(None, {"image": self.x})[0].argmax(1) == self.y))
        if self.zero:
            for init in model.graph.initializer:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
        return score


def with_zero_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
    return out


def test_an_eval_func_zeroing_its_model_poisons_no_later_trial(cnn, calib, digits, tmp_path):
    before = cnn.SerializeToString()
    fp32 = top1(cnn, digits)
    evaluate = Top1(digits.x_test, digits.y_test, zero=True)
    q = quantization.fit(cnn, conf(), calib, eval_func=evaluate, workspace=tmp_path)
    rows = q.report["tuning"]["trials"]
    assert evaluate.calls == len(rows)
    assert rows[0]["accuracy"] == fp32
    assert rows[1]["accuracy"] >= fp32 - 0.02, "trial 1 was built from zeroed weights"
    assert top1(q.model, digits) >= fp32 - 0.02, "the returned model was zeroed"
    assert cnn.SerializeToString() == before


def test_resume_refuses_a_model_with_the_same_graph_and_other_weights(cnn, calib, digits, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(cnn, str(path))
    evaluate = Top1(digits.x_test, digits.y_test)
    quantization.fit(str(path), conf(), calib, eval_func=evaluate, workspace=tmp_path / "ws")
    onnx.save_model(with_zero_weights(cnn), str(path))  # same file name, same graph
    again = Top1(digits.x_test, digits.y_test)
    for model in (str(path), with_zero_weights(cnn)):
        with pytest.raises(ConfigError, match=r"the model's weights differ") as info:
            quantization.fit(
                model, conf(), calib, eval_func=again, resume_from=tmp_path / "ws",
                workspace=tmp_path / "new",
            )  # fmt: skip
        assert "ops differ" not in str(info.value) and "config" not in str(info.value)
    assert again.calls == 0
