"""Silent wrong results found by probing (issue 13): each now measured, and named when it happens."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.calibration import CalibrationWarning

from . import models


def _with_outlier(calib: list) -> list:
    """The calibration batches with one pixel of the first batch set to 1e30 (a corrupt sample)."""
    bad = [(x.copy(), y) for x, y in calib]
    bad[0][0][7, 0, 3, 4] = 1e30
    return bad


def test_one_huge_calibration_pixel_is_named_and_percentile_recovers(cnn, calib, digits):
    bad = _with_outlier(calib)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minmax = quantization.fit(cnn, PostTrainingQuantConfig(guards=False), calib_dataloader=bad)
    named = [str(w.message) for w in caught if w.category is CalibrationWarning]
    # the input tensor (FX names it 'x') is named first, with the value and the remedy
    assert named and named[0].startswith("calibration tensor 'x': 1 of ")
    assert "|x| >= 6.34e+29" in named[0] and "'percentile' or 'kl'" in named[0]
    assert models.accuracy(minmax.model, digits) < 0.3  # what the warning is about (0.11)
    fp32 = models.accuracy(cnn, digits)
    rule = {"activation": {"algorithm": ["percentile"]}}
    conf = PostTrainingQuantConfig(guards=False, op_type_dict={"Conv2d": rule, "Linear": rule})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)  # percentile leaves the pixel out
        robust = quantization.fit(cnn, conf, calib_dataloader=bad)
    assert models.accuracy(robust.model, digits) >= fp32 - 0.01


class CallsTwice(nn.Module):
    """``self.a`` runs twice per forward; its second output has about 4x the range of its first."""

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc_in = nn.Linear(64, 32)
        self.a = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)
        with torch.no_grad():
            self.a.weight.mul_(4.0)
        self.shared = shared
        self.b = self.a if shared else copy.deepcopy(self.a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc_in(x.flatten(1)))
        return self.out(self.b(self.a(h)) if not self.shared else self.a(self.a(h)))


class CallsTwiceBranchy(CallsTwice):
    """The same with a Python branch on values: FX cannot trace it, eager mode runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 1.0
        return super().forward(x)


def _error(model: nn.Module, calib: list, digits: models.Digits) -> tuple[float, object, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantization.fit(model, PostTrainingQuantConfig(guards=False), calib_dataloader=calib)
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        fp32, int8 = model(x), q.model(x)
    messages = [str(w.message) for w in caught if "more than once" in str(w.message)]
    return float((int8 - fp32).norm() / fp32.norm()), q, messages


def test_fx_gives_each_call_of_a_module_its_own_range(calib, digits):
    shared_error, q, messages = _error(CallsTwice(shared=True), calib, digits)
    unshared_error, _, _ = _error(CallsTwice(shared=False), calib, digits)
    assert q.model.inc_torch_info.mode == "fx" and messages == []
    ranges = q.model.inc_torch_info.ranges
    assert {"a", "a_call2"} <= set(ranges)  # one output range per call
    assert ranges["a_call2"].max > 2 * ranges["a"].max
    # one range for both calls gave 2.2% logit error here; its own range: as unshared (1.7%)
    assert shared_error <= unshared_error * 1.05


def test_eager_mode_keeps_a_module_called_twice_fp32_and_says_so(calib, digits):
    model = CallsTwiceBranchy(shared=True)
    error, q, messages = _error(model, calib, digits)
    assert q.model.inc_torch_info.mode == "eager"
    assert messages and "calls 'a' (2 calls) more than once per forward" in messages[0]
    assert type(q.model.a) is nn.Linear  # fp32
    unshared_error, _, _ = _error(CallsTwiceBranchy(shared=False), calib, digits)
    assert error <= unshared_error * 1.05  # 2.4% with one range for both calls


def test_a_module_under_two_names_runs_in_eager_mode(calib, digits):
    # one Linear reachable as self.a and self.b: eager convert swapped it under both names and
    # the second ran an int8 kernel on float input (NotImplementedError: quantized::linear)
    model = CallsTwiceBranchy(shared=False)
    model.b = model.a
    model.shared = False
    error, _, messages = _error(model, calib, digits)
    assert messages and np.isfinite(error) and error < 0.05


def test_a_module_under_two_names_in_fx_quantizes_both_calls(calib, digits):
    model = CallsTwice(shared=False)
    model.b = model.a  # the FX graph calls targets 'a' and 'b', one module
    error, q, _ = _error(model, calib, digits)
    assert q.model.inc_torch_info.mode == "fx"
    assert "b_call2" not in q.model.inc_torch_info.ranges  # copies are named after the op
    assert {"a", "a_call2"} <= set(q.model.inc_torch_info.ranges)
    assert error < 0.03
