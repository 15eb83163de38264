"""Tuning faults on PyTorch (issue 13): an eval_func that zeroes the module it gets poisons no
later trial, an accuracy returned as a 0-d tensor counts, a bool does not, and a history never
resumes for a module with other weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.errors import ConfigError, DataError

from . import models


def conf() -> PostTrainingQuantConfig:
    return PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(tolerable_loss=0.02),
        tuning_criterion=TuningCriterion(objective="accuracy", max_trials=4),
    )


class Top1:
    """Top-1 on the digits test split as a 0-d tensor; ``zero=True`` then zeroes every
    parameter and buffer of the module it was given, in place."""

    def __init__(self, digits: models.Digits, zero: bool = False) -> None:
        self.x = torch.from_numpy(digits.x_test)
        self.y = torch.from_numpy(digits.y_test)
        self.zero = zero
        self.calls = 0

    def __call__(self, model: nn.Module) -> torch.Tensor:
        self.calls += 1
        with torch.no_grad():
            logits = model(self.x)
            score = (logits.argmax(1) == self.y).float().mean()
            if self.zero:
                for tensor in model.state_dict().values():
                    if torch.is_tensor(tensor) and tensor.is_floating_point():
                        tensor.zero_()
        return score


class Passed(Top1):
    def __call__(self, model: nn.Module) -> bool:  # type: ignore[override]
        return bool(super().__call__(model) > 0.5)


def test_an_eval_func_zeroing_its_model_poisons_no_later_trial(cnn, calib, digits, tmp_path):
    users = copy.deepcopy(cnn)
    before = {k: v.clone() for k, v in users.state_dict().items()}
    fp32 = models.accuracy(users, digits)
    evaluate = Top1(digits, zero=True)
    q = quantization.fit(users, conf(), calib, eval_func=evaluate, workspace=tmp_path)
    rows = q.report["tuning"]["trials"]
    assert evaluate.calls == len(rows)
    assert rows[0]["accuracy"] == pytest.approx(fp32)
    assert rows[1]["accuracy"] >= fp32 - 0.02, "trial 1 was built from zeroed weights"
    assert models.accuracy(q.model, digits) >= fp32 - 0.02, "the returned model was zeroed"
    assert all(torch.equal(before[k], v) for k, v in users.state_dict().items())


def test_a_bool_is_not_an_accuracy(cnn, calib, digits, tmp_path):
    with pytest.raises(DataError, match=r"eval_func must return a real number.*got bool True"):
        quantization.fit(cnn, conf(), calib, eval_func=Passed(digits), workspace=tmp_path)


def test_resume_refuses_a_module_with_other_weights(cnn, calib, digits, tmp_path):
    quantization.fit(cnn, conf(), calib, eval_func=Top1(digits), workspace=tmp_path / "ws")
    other = copy.deepcopy(cnn)
    with torch.no_grad():
        other.conv1.weight.mul_(0.5)  # same graph, one tensor changed
    again = Top1(digits)
    with pytest.raises(ConfigError, match=r"the model's weights differ") as info:
        quantization.fit(
            other, conf(), calib, eval_func=again, resume_from=tmp_path / "ws",
            workspace=tmp_path / "new",
        )  # fmt: skip
    assert "ops differ" not in str(info.value)
    assert again.calls == 0
    resumed = quantization.fit(
        copy.deepcopy(cnn), conf(), calib, eval_func=again, resume_from=tmp_path / "ws",
        workspace=tmp_path / "new",
    )  # fmt: skip
    assert again.calls == 0 and resumed.report["tuning"]["trials_used"] >= 1
