"""Post-training static and dynamic quantization of nn.Modules, checked against inc_core's math."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from inc_core import PostTrainingQuantConfig, TuningCriterion, quantization, scheme
from inc_core.quantization import prepare_session
from inc_torch import _cpu
from inc_torch.backend import TorchBackend
from inc_torch.info import info_of
from inc_torch.qconfig import Settings

from . import models


def _within_1pct(accuracy: float, baseline: float) -> None:
    assert accuracy >= baseline * 0.99, f"int8 {accuracy:.4f} vs fp32 {baseline:.4f}"


def test_ops_are_the_quantizable_modules_by_qualified_name(cnn):
    ops = TorchBackend().ops(cnn)
    modules = dict(cnn.named_modules())
    assert [(op.name, op.type) for op in ops] == [
        ("conv1", "Conv2d"),
        ("conv2", "Conv2d"),
        ("fc1", "Linear"),
        ("fc2", "Linear"),
    ]
    assert all(type(modules[op.name]).__name__ == op.type for op in ops)


def test_static_fx_int8_keeps_accuracy_and_the_user_model(cnn, digits, calib, cnn_accuracy):
    before = models.fingerprint(cnn)
    conf = PostTrainingQuantConfig(approach="static", guards=False)  # the plan, not the speed guard
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert models.fingerprint(cnn) == before
    assert info_of(q.model).mode == "fx"
    assert isinstance(q.model.conv1, torch.ao.nn.intrinsic.quantized.ConvReLU2d)
    assert isinstance(q.model.fc2, torch.ao.nn.quantized.Linear)
    assert set(q.plan.quantized_ops()) == {"conv1", "conv2", "fc1", "fc2"}
    _within_1pct(models.accuracy(q.model, digits), cnn_accuracy)


@pytest.mark.parametrize(
    ("act_scheme", "weight_granularity", "reduce_range"),
    [("asym", "per_channel", False), ("sym", "per_tensor", True)],
)
def test_scales_and_zero_points_equal_inc_core_scheme(
    cnn, calib, act_scheme, weight_granularity, reduce_range
):
    conf = PostTrainingQuantConfig(
        approach="static",
        reduce_range=reduce_range,
        op_type_dict={
            "Conv2d": {
                "activation": {"scheme": [act_scheme]},
                "weight": {"granularity": [weight_granularity]},
            },
            "Linear": {
                "activation": {"scheme": [act_scheme]},
                "weight": {"granularity": [weight_granularity]},
            },
        },
    )
    session = prepare_session(cnn, conf, calib)
    plan = session.default_plan
    ranges = session.ranges_for(plan)
    q = session.wrap(session.build(plan), plan)
    act = {
        "dtype": "uint8",
        "scheme": act_scheme,
        "convention": "pytorch",
        "reduce_range": reduce_range,
    }

    # activations: the input quantizer of the graph and conv1's (fused ReLU) output
    expected_in = scheme.compute_qparams(ranges["x"].min, ranges["x"].max, **act)
    assert float(q.model.conv1_input_scale_0) == pytest.approx(float(expected_in.scale), rel=1e-6)
    assert int(q.model.conv1_input_zero_point_0) == int(expected_in.zero_point)
    expected_out = scheme.compute_qparams(ranges["conv1"].min, ranges["conv1"].max, **act)
    assert q.model.conv1.scale == pytest.approx(float(expected_out.scale), rel=1e-6)
    assert q.model.conv1.zero_point == int(expected_out.zero_point)
    qmax = 127 if reduce_range else 255
    assert 0 <= q.model.conv1.zero_point <= qmax

    # weights: per channel or per tensor, from the fp32 weights
    for name in ("conv2", "fc1"):
        fp32 = dict(cnn.named_modules())[name].weight.detach().numpy()
        expected = scheme.weight_qparams(
            fp32, granularity=weight_granularity, axis=0, convention="pytorch"
        )
        qweight = dict(q.model.named_modules())[name].weight()
        if weight_granularity == "per_channel":
            got = qweight.q_per_channel_scales().numpy()
        else:
            got = np.asarray(qweight.q_scale())
        np.testing.assert_allclose(got, expected.scale, rtol=1e-6)


def test_reduce_range_defaults_to_the_cpus_vnni_support(cnn, calib):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib)
    assert q.plan.reduce_range is None  # "auto" is kept in the plan, resolved per machine
    assert Settings.of(q.plan).reduce_range is (not _cpu.has_vnni())
    forced = quantization.fit(
        cnn, PostTrainingQuantConfig(approach="static", reduce_range=True), calib_dataloader=calib
    )
    assert Settings.of(forced.plan).reduce_range is True
    assert forced.model.conv2.zero_point <= 127 and forced.model.fc1.zero_point <= 127


def test_has_vnni_reads_cpu_flags(tmp_path):
    with_vnni = tmp_path / "a"
    with_vnni.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    without = tmp_path / "b"
    without.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert _cpu.has_vnni(str(with_vnni)) is True
    assert _cpu.has_vnni(str(without)) is False
    assert _cpu.has_vnni(str(tmp_path / "missing")) is False


def test_op_type_dict_generic_conv_keeps_convolutions_fp32(cnn, digits, calib, cnn_accuracy):
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    q = quantization.fit(
        cnn,
        PostTrainingQuantConfig(approach="static", op_type_dict={"Conv": fp32}, guards=False),
        calib_dataloader=calib,
    )
    assert q.plan.float_ops() == ["conv1", "conv2"]
    # FX fuses Conv+ReLU whatever the qconfig; the fused module stays float
    assert ".quantized" not in type(q.model.conv1).__module__
    assert q.model.conv1[0].weight.dtype == torch.float32
    assert isinstance(q.model.fc1, torch.ao.nn.quantized.Linear)
    _within_1pct(models.accuracy(q.model, digits), cnn_accuracy)


def test_op_name_dict_regex_and_matmul_alias(cnn, calib):
    fp32 = {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}
    conf = PostTrainingQuantConfig(approach="static", op_name_dict={"fc.*": fp32}, guards=False)
    q = quantization.fit(cnn, conf, calib_dataloader=calib)
    assert q.plan.float_ops() == ["fc1", "fc2"]
    assert type(q.model.fc2) is nn.Linear
    conf = PostTrainingQuantConfig(approach="static", op_type_dict={"MatMul": fp32}, guards=False)
    assert quantization.fit(cnn, conf, calib_dataloader=calib).plan.float_ops() == ["fc1", "fc2"]


def test_an_nn_flatten_between_int8_ops_stays_int8(digits):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    models.train(model, digits, epochs=3)
    q = quantization.fit(
        model, PostTrainingQuantConfig(approach="static", guards=False), calib_dataloader=digits.batches()[:2]
    )
    calls = [n.target for n in q.model.graph.nodes if n.op in ("call_method", "call_function")]
    # one quantize at the input, one dequantize at the output: nothing around the flatten
    assert calls.count("dequantize") == 1 and calls.count(torch.quantize_per_tensor) == 1
    assert type(model[2]) is nn.Flatten  # the user's model keeps its module
    _within_1pct(models.accuracy(q.model, digits), models.accuracy(model, digits))


def test_dynamic_quantizes_linear_layers(cnn, digits, cnn_accuracy):
    q = quantization.fit(cnn, PostTrainingQuantConfig(approach="dynamic", guards=False))
    assert q.plan.quantized_ops() == ["fc1", "fc2"]
    assert isinstance(q.model.fc1, torch.ao.nn.quantized.dynamic.Linear)
    assert type(q.model.conv1) is nn.Conv2d
    fp32 = cnn.fc1.weight.detach().numpy()
    expected = scheme.weight_qparams(fp32, granularity="per_channel", axis=0, convention="pytorch")
    np.testing.assert_allclose(
        q.model.fc1.weight().q_per_channel_scales().numpy(), expected.scale, rtol=1e-6
    )
    _within_1pct(models.accuracy(q.model, digits), cnn_accuracy)


def test_dynamic_linear_runs_large_products_on_a_onednn_packing_of_the_same_weights(digits):
    from inc_torch import dynamic

    def fit() -> nn.Module:
        model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
        conf = PostTrainingQuantConfig(approach="dynamic", reduce_range=False, guards=False)
        return quantization.fit(model, conf).model

    def close(a: torch.Tensor, b: torch.Tensor) -> None:  # the same int8 product, float rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))

    torch.manual_seed(0)
    q = fit()
    wide = q[0]
    assert isinstance(wide, dynamic.DynamicLinear) and wide.onednn is not None
    x = torch.from_numpy(digits.x_test.reshape(-1, 64))
    small, large = x[:8], x[:256]  # 8 x 512 and 256 x 512 outputs: under and over the threshold
    assert len(small) * 512 < dynamic.ONEDNN_MIN_OUTPUTS <= len(large) * 512
    with torch.no_grad():
        wide(small)
        assert wide.onednn.packed is None  # small products stay on FBGEMM
        got = wide(large)
        assert wide.onednn.packed is not None
        wide.onednn, saved = None, wide.onednn  # the same module on FBGEMM only
        want = wide(large)
        wide.onednn = saved
        close(got, want)
        # new weights: the oneDNN packing follows; a copy builds its own
        other = fit()
        q.load_state_dict(other.state_dict())
        close(wide(large), other[0](large))
        copied = copy.deepcopy(q)[0]
        assert copied.onednn is not None and copied.onednn.packed is None
        close(copied(large), other[0](large))


def test_auto_is_static_with_calibration_data_and_dynamic_without(cnn, calib):
    with_data = quantization.fit(cnn, PostTrainingQuantConfig(guards=False), calib_dataloader=calib)
    assert {op.approach for op in with_data.plan.ops.values()} == {"static"}
    without = quantization.fit(cnn, PostTrainingQuantConfig(guards=False))
    assert {without.plan.ops[n].approach for n in ("fc1", "fc2")} == {"dynamic"}
    assert without.plan.float_ops() == ["conv1", "conv2"]


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        out, _ = self.gru(out)
        return self.head(out[:, -1])


def test_dynamic_lstm_and_gru(digits):
    torch.manual_seed(0)
    model = _Recurrent().eval()
    x = torch.from_numpy(digits.x_test[:32, 0])  # rows of each digit image as a sequence
    q = quantization.fit(model, PostTrainingQuantConfig(approach="dynamic", guards=False))
    assert q.plan.quantized_ops() == ["lstm", "gru", "head"]
    assert isinstance(q.model.lstm, torch.ao.nn.quantized.dynamic.LSTM)
    assert isinstance(q.model.gru, torch.ao.nn.quantized.dynamic.GRU)
    with torch.no_grad():
        ref, got = model(x), q.model(x)
    assert torch.allclose(ref, got, atol=0.05), (ref - got).abs().max()


def test_untraceable_model_falls_back_to_eager_mode(digits):
    model = models.trained_cnn(digits, models.BranchyCNN)
    baseline = models.accuracy(model, digits)
    calib = digits.batches("train", 50)[:4]
    # guards off: the speed guard may keep the one-channel conv1 in fp32, which is not under test
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(model, conf, calib_dataloader=calib)
    info = info_of(q.model)
    assert info.mode == "eager"
    assert "control flow" in info.fx_error
    assert isinstance(q.model.conv1, torch.ao.quantization.QuantWrapper)
    _within_1pct(models.accuracy(q.model, digits), baseline)


def test_calib_func_runs_the_prepared_model(cnn, digits, cnn_accuracy):
    x = torch.from_numpy(digits.x_train[:200])
    conf = PostTrainingQuantConfig(approach="static", guards=False)
    q = quantization.fit(cnn, conf, calib_func=lambda m: m(x))
    assert set(q.plan.quantized_ops()) == {"conv1", "conv2", "fc1", "fc2"}
    _within_1pct(models.accuracy(q.model, digits), cnn_accuracy)


def test_accuracy_aware_tuning_with_eval_func(cnn, digits, calib, cnn_accuracy, tmp_path):
    seen = []

    def evaluate(model) -> float:
        seen.append(model)
        return models.accuracy(model, digits)

    # objective "accuracy": on this shared CPU latency is too noisy for the performance guard
    conf = PostTrainingQuantConfig(
        approach="static", tuning_criterion=TuningCriterion(objective="accuracy")
    )
    q = quantization.fit(cnn, conf, calib_dataloader=calib, eval_func=evaluate, workspace=tmp_path)
    assert len(seen) >= 2  # the fp32 baseline, then at least one int8 candidate
    assert q.plan.quantized_ops() == ["conv1", "conv2", "fc1", "fc2"]
    assert q.report["tuning"]["trials"][-1]["status"].endswith("pass")
    _within_1pct(models.accuracy(q.model, digits), cnn_accuracy)
