"""``fit`` with approach="weight_only" through the core's contract (``inc_core.weight_only.plan``),
on a numpy backend that implements it the way a plugin does: the space per op, no calibration
for RTN, the ops' input statistics for GPTQ/AWQ, the per-op setting and recipes in quantize,
the report and a tuned mix of bits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inc_core
from inc_core import backend as registry
from inc_core import quantization, speed
from inc_core.config import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion
from inc_core.errors import ConfigError, GuardWarning
from inc_core.space import OpCapability, QuantPlan, TensorRanges
from inc_core.weight_only import (
    InputStatsCollector,
    WeightOnlyScheme,
    dequantize,
    quantize_weights,
    rtn,
    scheme_of,
    weight_options,
)
from inc_core.weight_only.plan import WEIGHT_ONLY_ACTIVATION, is_weight_only

from .reference_backend import NumpyMLP, ReferenceBackend, as_features

CALLS: list[str] = []


class WeightOnlyNumpy(ReferenceBackend):
    """The reference MLP with weight-only kernels for 4 and 8 bits, groups of 8/16/32 or -1."""

    name = "reference_woq"
    priority = 999
    supports_weight_only = True

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach == "weight_only":
            return {
                "Dense": OpCapability(
                    WEIGHT_ONLY_ACTIVATION, weight_options((4, 8), (32, 16, 8, -1))
                )
            }
        return super().capability(approach, device)

    def calibrate(
        self, model: NumpyMLP, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        if not is_weight_only(plan):
            return super().calibrate(model, dataloader, plan)
        CALLS.append("calibrate")
        collector = InputStatsCollector.for_plan(plan)
        for batch in dataloader:
            out = as_features(batch)
            for layer in model.layers:
                if layer.name in collector.ops:
                    collector.add(layer.name, out)
                out = (
                    np.maximum(out @ layer.weight + layer.bias, 0)
                    if layer.relu
                    else out @ layer.weight + layer.bias
                )
        return dict(collector.result())

    def quantize(self, model: NumpyMLP, plan: QuantPlan, ranges: TensorRanges) -> NumpyMLP:
        if not is_weight_only(plan):
            return super().quantize(model, plan, ranges)
        layers = []
        for layer in model.layers:
            scheme = scheme_of(plan.ops[layer.name])
            if scheme is None:
                layers.append(layer)
                continue
            stats = ranges.get(layer.name)
            (result,) = quantize_weights([layer.weight], scheme, plan.recipes, stats)  # type: ignore[arg-type]
            w = dequantize(result.weight).astype(np.float64)
            if result.input_scale is not None:  # x / s @ (s w): folded into the weight here
                w = w / result.input_scale[:, None]
            layers.append(replace(layer, weight=w))
        return NumpyMLP(tuple(layers), {"plan": plan.to_dict()})

    def model_size(self, model: NumpyMLP) -> int:
        plan = model.meta.get("plan")
        if plan is None:
            return sum(layer.weight.size * 4 for layer in model.layers)
        ops = QuantPlan.from_dict(plan).ops
        total = 0
        for layer in model.layers:
            s = scheme_of(ops[layer.name])
            total += layer.weight.size * 4 if s is None else layer.weight.size * s.bits // 8
        return total

    def load(self, directory: Path, **kwargs: Any) -> NumpyMLP:
        return super().load(directory, **kwargs)


@pytest.fixture(autouse=True)
def woq_backend() -> Iterator[None]:
    registry.register(WeightOnlyNumpy)
    CALLS.clear()
    yield
    registry.unregister(WeightOnlyNumpy.name)


def woq(**fields: Any) -> PostTrainingQuantConfig:
    rules = {".*": {"weight": {"bits": 4, "group_size": 8, **fields}}}
    return PostTrainingQuantConfig(approach="weight_only", op_type_dict=rules)


def test_rtn_needs_no_calibration_and_reports_bits_group_algorithm_and_size(
    mlp: NumpyMLP, blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    q = quantization.fit(mlp, woq())
    assert CALLS == []  # no calibration pass for RTN
    assert {n: op.approach for n, op in q.plan.ops.items()} == {
        "fc1": "weight_only",
        "fc2": "weight_only",
    }
    assert scheme_of(q.plan.ops["fc1"]) == WeightOnlyScheme(4, 8, "sym", "RTN")
    expected = dequantize(rtn(mlp.layers[0].weight, 4, 8, "sym", full_range=True))  # fit default
    np.testing.assert_allclose(q.model.layers[0].weight, expected, rtol=1e-6)
    report = q.report["weight_only"]
    assert report["ops"]["fc2"] == {"bits": 4, "group_size": 8, "scheme": "sym", "algorithm": "RTN"}
    assert report["bits"] == {"int4": 2}
    assert report["size"]["ratio"] == pytest.approx(1 / 8)
    rows = {r["op"]: r for r in q.report["per_op"]}
    assert rows["fc1"]["bits"] == 4 and rows["fc1"]["algorithm"] == "RTN"
    assert rows["fc1"]["weight"] == "int4" and rows["fc1"]["activation"] == "fp32"
    assert q.report["speed"]["skipped"].startswith("no calibration batch to time")


def test_a_weight_only_model_not_faster_than_fp32_is_warned_about_and_kept(
    mlp: NumpyMLP, calib_loader: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    # the reference backend's modelled cost: dequantized weights cost what fp32 costs
    with pytest.warns(GuardWarning, match=r"weight-only model is 1\.00x the time of fp32"):
        q = quantization.fit(mlp, woq(), calib_dataloader=calib_loader)
    assert q.report["speed"]["verdict"] == "not faster"
    # timed on one calibration sample, in the fewest rounds: the numbers only inform
    assert q.report["speed"]["batch"] == 1 and q.report["speed"]["rounds"] == speed.MIN_ROUNDS
    assert q.report["fallback"] == [] and q.plan.quantized_ops() == ["fc1", "fc2"]


@pytest.mark.parametrize("algorithm", ["GPTQ", "AWQ"])
def test_gptq_and_awq_get_each_ops_inputs_from_the_backend(
    mlp: NumpyMLP, calib_loader: list[tuple[np.ndarray, np.ndarray]], algorithm: str
) -> None:
    conf = replace(woq(group_size=-1, scheme="asym", algorithm=algorithm), guards=False)
    q = quantization.fit(mlp, conf, calib_dataloader=calib_loader)
    assert CALLS == ["calibrate"]
    # by hand: fc2's input is fc1's output on the calibration samples (the first 100)
    x = np.concatenate([b for b, _ in calib_loader])[:100].astype(np.float64)
    hidden = np.maximum(x @ mlp.layers[0].weight + mlp.layers[0].bias, 0)
    stats = InputStatsCollector({"fc2": algorithm})
    stats.add("fc2", hidden)
    scheme = WeightOnlyScheme(4, -1, "asym", algorithm)
    (want,) = quantize_weights([mlp.layers[1].weight], scheme, {}, stats.result()["fc2"])
    expected = dequantize(want.weight).astype(np.float64)
    if want.input_scale is not None:
        expected = expected / want.input_scale[:, None]
    np.testing.assert_allclose(q.model.layers[1].weight, expected, rtol=1e-5, atol=1e-7)
    rtn_model = quantization.fit(mlp, replace(woq(group_size=-1, scheme="asym"), guards=False))
    errors = {
        name: float(
            np.mean(
                (np.maximum(hidden, 0) @ m.layers[1].weight - hidden @ mlp.layers[1].weight) ** 2
            )
        )
        for name, m in (("RTN", rtn_model.model), (algorithm, q.model))
    }
    assert errors[algorithm] <= errors["RTN"], errors  # on the data it calibrated with


def test_gptq_without_data_and_unsupported_settings_are_config_errors(mlp: NumpyMLP) -> None:
    with pytest.raises(ConfigError, match="'GPTQ' reads calibration activations"):
        quantization.fit(mlp, woq(algorithm="GPTQ"))
    with pytest.raises(
        ConfigError, match=r"op 'fc1' \(Dense\): weight group_size=64 .*allowed: 32, 16, 8, -1"
    ):
        quantization.fit(mlp, woq(group_size=64))
    with pytest.raises(ConfigError, match=r"weight bits=2 .*allowed: 4, 8"):
        quantization.fit(mlp, woq(bits=2))
    conf = PostTrainingQuantConfig(
        approach="weight_only", op_name_dict={"fc9": {"weight": {"bits": 8}}}
    )
    with pytest.raises(ConfigError, match="op_name_dict key 'fc9' matches no op"):
        quantization.fit(mlp, conf)
    everything_fp32 = PostTrainingQuantConfig(
        approach="weight_only", op_name_dict={".*": {"weight": {"dtype": "fp32"}}}
    )
    with pytest.raises(ConfigError, match="no op of the model is left to quantize"):
        quantization.fit(mlp, everything_fp32)


def test_op_name_dict_keeps_an_op_fp32_or_at_8_bits(mlp: NumpyMLP) -> None:
    conf = PostTrainingQuantConfig(
        approach="weight_only",
        op_type_dict={".*": {"weight": {"bits": 4, "group_size": 8}}},
        op_name_dict={"fc2": {"weight": {"dtype": "fp32"}}},
    )
    q = quantization.fit(mlp, conf)
    assert not q.plan.ops["fc2"].quantized and q.report["weight_only"]["fp32_ops"] == ["fc2"]
    np.testing.assert_array_equal(q.model.layers[1].weight, mlp.layers[1].weight)
    eight = PostTrainingQuantConfig(
        approach="weight_only", op_name_dict={"fc2": {"weight": {"bits": 8}}}
    )
    q = quantization.fit(mlp, eight)
    assert scheme_of(q.plan.ops["fc2"]) == WeightOnlyScheme(8, 32, "sym", "RTN")
    assert scheme_of(q.plan.ops["fc1"]) == WeightOnlyScheme(4, 32, "sym", "RTN")


def test_the_space_offers_8_bits_then_fp32_and_tuning_mixes_bits(
    mlp: NumpyMLP, blobs: tuple[np.ndarray, np.ndarray]
) -> None:
    session = quantization.prepare_session(mlp, woq())
    choices = [[scheme_of(c) for c in s.choices] for s in session.spaces]
    assert choices[0] == [
        WeightOnlyScheme(4, 8, "sym", "RTN"),
        WeightOnlyScheme(8, 8, "sym", "RTN"),
        None,
    ]
    x, _ = blobs
    reference = mlp(x)

    def negative_error(model: Any) -> float:  # relative output MSE against fp32, negated
        return -float(np.mean((model(x) - reference) ** 2) / np.mean(reference**2))

    conf = PostTrainingQuantConfig(
        approach="weight_only",
        op_type_dict={".*": {"weight": {"bits": 4, "group_size": -1, "scheme": "asym"}}},
        accuracy_criterion=AccuracyCriterion(tolerable_loss=1e-4, criterion="absolute"),
        tuning_criterion=TuningCriterion(max_trials=20),
    )
    default = quantization.fit(mlp, conf)
    assert negative_error(default.model) < -1e-4  # 4 bits alone misses the goal
    q = quantization.fit(mlp, conf, eval_func=negative_error)
    assert negative_error(q.model) >= -1e-4
    chosen = [scheme_of(op) for op in q.plan.ops.values()]
    assert WeightOnlyScheme(8, -1, "asym", "RTN") in chosen, chosen
    assert q.report["weight_only"]["bits"].get("int8", 0) >= 1


def test_save_and_load_keep_the_plan(mlp: NumpyMLP, tmp_path: Path) -> None:
    q = quantization.fit(mlp, woq())
    q.save(tmp_path / "out")
    back = inc_core.load(tmp_path / "out")
    assert back.plan == q.plan
    assert back.report["weight_only"]["ops"]["fc1"]["bits"] == 4
    page = (tmp_path / "out" / "report.html").read_text()
    assert "weight-only quantization" in page and "0.125x fp32" in page


def test_weights_sharing_an_input_give_the_one_by_one_result_for_gptq() -> None:
    """GPTQ's output columns are independent given the Hessian: quantizing q, k and v together
    (one inverse) equals quantizing each alone."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 48)) + 0.1 * rng.normal(size=(300, 48))
    weights = [rng.normal(size=(48, n)).astype(np.float32) for n in (16, 24, 8)]
    collector = InputStatsCollector({"qkv": ("GPTQ", "AWQ")})
    for i in range(0, 300, 100):
        collector.add("qkv", x[i : i + 100])
    stats = collector.result()["qkv"]
    assert stats.hessian is not None and stats.rows is not None and stats.samples == 300
    scheme = WeightOnlyScheme(4, 16, "asym", "GPTQ")
    together = quantize_weights(weights, scheme, {}, stats)
    for w, result in zip(weights, together, strict=True):
        (alone,) = quantize_weights([w], scheme, {}, stats)
        np.testing.assert_array_equal(result.weight.q, alone.weight.q)
        np.testing.assert_array_equal(result.weight.scale, alone.weight.scale)
    # AWQ gives the three one input scale, the one its search finds on them side by side
    shared = quantize_weights(weights, replace(scheme, algorithm="AWQ"), {}, stats)
    assert all(r.input_scale is not None for r in shared)
    np.testing.assert_array_equal(shared[0].input_scale, shared[2].input_scale)


def test_the_collector_keeps_a_bounded_even_sample_and_says_what_is_missing() -> None:
    collector = InputStatsCollector({"a": "AWQ", "b": "GPTQ"}, max_rows=50)
    for i in range(10):
        collector.add("a", np.full((2, 30, 4), float(i)))  # (batch, tokens, K)
    with pytest.raises(ValueError, match="no calibration input was fed for op"):
        collector.result()
    collector.add("b", np.ones((7, 4)))
    stats = collector.result()
    rows = stats["a"].rows
    assert rows is not None and rows.shape == (50, 4)
    assert set(np.unique(rows[:, 0])) == set(range(10))  # every batch is represented
    assert stats["a"].hessian is None and stats["b"].rows is None
    np.testing.assert_array_equal(stats["a"].max, [9.0] * 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        collector.add("b", np.full((1, 4), np.nan))
