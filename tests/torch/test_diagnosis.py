"""Per-op diagnosis for the default guards: ``op_outputs`` (read into ``sqnr_db``) and
``runs_as``, on fp32 and int8 models of every kind (FX through its frozen trace, dynamic,
eager, QAT-converted), and PReLU convnets (MTCNN's shape) on the FX path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inc_core import PostTrainingQuantConfig, quantization
from inc_torch import frozen
from inc_torch.backend import TorchBackend
from inc_torch.info import info_of
from inc_torch.qconfig import Settings

from . import models

OPS = ["conv1", "conv2", "fc1", "fc2"]
#: per-op SQNR of the digits CNN's int8 outputs against fp32 (measured 37-53 dB)
MIN_SQNR_DB = 25.0


def _sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(((ref - test) ** 2).sum())
    return 10 * np.log10(float((ref**2).sum()) / max(noise, 1e-30))


def _fit(model: nn.Module, calib: list, **conf: object) -> nn.Module:
    conf.setdefault("guards", False)  # every planned op int8: what these tests inspect
    q = quantization.fit(model, PostTrainingQuantConfig(**conf), calib_dataloader=calib)
    return q.model


def _hooks_left(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def _check_pair(cnn: nn.Module, int8: nn.Module, x: np.ndarray, ops: list[str]) -> None:
    backend = TorchBackend()
    ref = backend.op_outputs(cnn, x, ops)
    got = backend.op_outputs(int8, x, ops)
    assert list(ref) == ops and list(got) == ops
    for op in ops:
        assert ref[op].dtype == got[op].dtype == np.float32, op
        assert ref[op].shape == got[op].shape, op
        assert _sqnr_db(ref[op], got[op]) >= MIN_SQNR_DB, (op, _sqnr_db(ref[op], got[op]))
    assert _hooks_left(cnn) == [] and _hooks_left(int8) == []


def test_fx_int8_op_outputs_match_fp32_through_the_frozen_trace(cnn, digits, calib):
    int8 = _fit(cnn, calib)
    x = digits.x_test[:32]
    with torch.no_grad():
        int8(torch.from_numpy(x))  # the frozen trace exists before the per-op run
    fast = frozen.of(int8)
    assert fast is not None and fast.traces
    _check_pair(cnn, int8, x, OPS)
    # the fast path is back, and untouched: same trace object, same output
    assert int8.forward is fast and frozen.of(int8) is fast
    # conv1 is fused with its ReLU: both sides read the fused output
    ref = TorchBackend().op_outputs(cnn, x, ["conv1"])["conv1"]
    assert ref.min() >= 0.0


def test_dynamic_int8_op_outputs_read_after_the_relu_fx_would_fuse(cnn, digits, calib):
    int8 = _fit(cnn, calib, approach="dynamic")
    x = digits.x_test[:32]
    _check_pair(cnn, int8, x, OPS)
    out = TorchBackend().op_outputs(int8, x, ["fc1"])["fc1"]
    assert out.min() >= 0.0  # fc1 -> relu3, as the fp32 side reads it


def test_eager_int8_op_outputs(digits, calib):
    branchy = models.trained_cnn(digits, models.BranchyCNN)
    int8 = _fit(branchy, calib)
    assert info_of(int8).mode == "eager"
    _check_pair(branchy, int8, digits.x_test[:32], OPS)


def test_qat_converted_op_outputs(cnn, digits):
    from inc_core import QuantizationAwareTrainingConfig, training

    cm = training.prepare_compression(cnn, QuantizationAwareTrainingConfig())
    cm.callbacks.on_train_begin()
    model = cm.model
    with torch.no_grad():  # fake-quant observers see real data (no training needed here)
        for x, _ in digits.batches("train", 100)[:4]:
            model(torch.from_numpy(x))
    cm.callbacks.on_train_end()
    int8 = cm.quantized.model
    assert isinstance(int8, torch.fx.GraphModule)
    _check_pair(cnn, int8, digits.x_test[:32], OPS)


def test_unknown_ops_are_left_out(cnn, digits, calib):
    int8 = _fit(cnn, calib)
    got = TorchBackend().op_outputs(int8, digits.x_test[:4], ["fc2", "no.such.op"])
    assert list(got) == ["fc2"]


def test_runs_as_names_int8_modules_and_fp32_fallbacks(cnn, calib):
    backend = TorchBackend()
    int8 = _fit(cnn, calib, op_name_dict={"fc2": {"activation": {"dtype": ["fp32"]}}})
    engine = Settings.of(info_of(int8).plan).qengine
    assert backend.runs_as(int8) == {
        "conv1": f"QuantizedConvReLU2d (int8, {engine})",
        "conv2": f"QuantizedConvReLU2d (int8, {engine})",
        "fc1": f"QuantizedLinearReLU (int8, {engine})",
        "fc2": "Linear (fp32)",
    }
    dynamic = _fit(cnn, calib, approach="dynamic")
    runs = backend.runs_as(dynamic)
    assert runs["fc1"] == f"DynamicQuantizedLinear (int8 dynamic, {engine})"
    assert runs["conv1"] == "Conv2d (fp32)"
    assert backend.runs_as(cnn) == {}  # an fp32 model: nothing inc built


class PReLUNet(nn.Module):
    """MTCNN's pattern: Conv -> PReLU -> MaxPool -> Conv -> PReLU -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.prelu1 = nn.PReLU(16)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.prelu2 = nn.PReLU(32)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.prelu1(self.conv1(x)))
        return self.fc(torch.flatten(self.prelu2(self.conv2(x)), 1))


@pytest.fixture(scope="module")
def prelu_net() -> nn.Module:
    torch.manual_seed(0)
    net = PReLUNet().eval()
    with torch.no_grad():  # slopes of both signs and sizes, as trained MTCNN nets have
        net.prelu1.weight.uniform_(-0.2, 0.6)
        net.prelu2.weight.uniform_(-0.2, 0.6)
    return net


def test_prelu_convnet_runs_fx_with_float_prelus_and_keeps_fidelity(prelu_net, digits, calib):
    before = models.fingerprint(prelu_net)
    int8 = _fit(prelu_net, calib)
    assert models.fingerprint(prelu_net) == before
    info = info_of(int8)
    assert info.mode == "fx", info.fx_error
    # torch's quantized PReLU is not used (its kernel scales positive inputs too, torch 2.13)
    assert not any(type(m).__name__ == "QuantizedPReLU" for m in int8.modules())
    x = torch.from_numpy(digits.x_test[:64])
    with torch.no_grad():
        ref, got = prelu_net(x).numpy(), int8(x).numpy()
    assert _sqnr_db(ref, got) >= 20.0
    ops = ["conv1", "conv2", "fc"]
    backend = TorchBackend()
    assert set(backend.runs_as(int8).values()) == {
        f"QuantizedConv2d (int8, {Settings.of(info.plan).qengine})",
        f"QuantizedLinear (int8, {Settings.of(info.plan).qengine})",
    }
    ref_ops, got_ops = (
        backend.op_outputs(prelu_net, x.numpy(), ops),
        backend.op_outputs(int8, x.numpy(), ops),
    )
    assert all(_sqnr_db(ref_ops[op], got_ops[op]) >= MIN_SQNR_DB for op in ops)
