"""Quantization-aware training: the spec's prepare_compression flow and training.fit."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import FakeQuantizeBase

from inc_core import QuantizationAwareTrainingConfig, TuningCriterion, load, scheme, training
from inc_torch.info import info_of

from . import models


def _train(model: torch.nn.Module, digits: models.Digits, epochs: int = 2) -> None:
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    model.train()
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()


def _output_fake_quant(prepared: torch.nn.Module, node_name: str) -> FakeQuantizeBase:
    for node in prepared.graph.nodes:
        if (
            node.op == "call_module"
            and node.args
            and getattr(node.args[0], "name", None) == node_name
        ):
            module = prepared.get_submodule(node.target)
            if isinstance(module, FakeQuantizeBase):
                return module
    raise AssertionError(f"no fake quantization after {node_name}")


def test_prepare_compression_flow(cnn, digits, cnn_accuracy, tmp_path):
    before = models.fingerprint(cnn)
    cm = training.prepare_compression(cnn, QuantizationAwareTrainingConfig())
    cm.callbacks.on_train_begin()
    model = cm.model
    assert info_of(model).mode == "fx"
    assert any(isinstance(m, FakeQuantizeBase) for m in model.modules())
    _train(model, digits)
    fake_quant = _output_fake_quant(model, "fc2")
    cm.callbacks.on_train_end()
    cm.save(tmp_path / "qat")
    assert models.fingerprint(cnn) == before

    q = cm.quantized
    assert isinstance(q.model.fc2, torch.ao.nn.quantized.Linear)
    assert models.accuracy(q.model, digits) >= cnn_accuracy * 0.99
    # torch's FBGEMM formula is the core's "pytorch" convention: same scale for the same range
    obs = fake_quant.activation_post_process
    expected = scheme.compute_qparams(
        obs.min_val.item(),
        obs.max_val.item(),
        dtype="uint8",
        scheme="asym",
        convention="pytorch",
        reduce_range=obs.reduce_range or fake_quant.quant_max == 127,
    )
    assert q.model.fc2.scale == pytest.approx(float(expected.scale), rel=1e-5)
    assert q.model.fc2.zero_point == int(expected.zero_point)

    loaded = load(tmp_path / "qat", model=models.DigitsCNN())
    x = torch.from_numpy(digits.x_test[:100])
    with torch.no_grad():
        assert torch.equal(loaded.model(x), q.model(x))


def test_training_fit_retrains_per_trial_and_meets_the_goal(cnn, digits, cnn_accuracy, tmp_path):
    trained = []

    def train_func(model):
        trained.append(model)
        _train(model, digits, epochs=1)
        return model

    # objective "accuracy": on this shared CPU latency is too noisy for the performance guard
    conf = QuantizationAwareTrainingConfig(tuning_criterion=TuningCriterion(objective="accuracy"))
    cm = training.prepare_compression(cnn, conf)
    q = training.fit(
        cm, train_func, eval_func=lambda m: models.accuracy(m, digits), workspace=tmp_path
    )
    assert trained, "train_func ran"
    assert models.accuracy(q.model, digits) >= cnn_accuracy * 0.99
    assert cm.model is q.model
    assert q.plan.quantized_ops() == ["conv1", "conv2", "fc1", "fc2"]
