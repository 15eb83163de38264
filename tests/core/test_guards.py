"""The default guards of fit: speed, fidelity, per-op diagnosis, the switch and the report.

Decisions are tested on the toy backend, whose latency is a modelled cost (each op type's int8
cost, quantized Add dearer than fp32), so they are deterministic: no clock is asserted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from inc_core import PostTrainingQuantConfig, fidelity, guards, load, quantization, speed
from inc_core import backend as registry
from inc_core.data import split_calibration
from inc_core.errors import ConfigError, GuardWarning
from inc_core.fidelity import MIN_SQNR_DB, agreement, compare, sqnr_db
from inc_core.guards import fallback_order
from inc_core.space import OpQuant, QuantPlan

from .tuning_backend import (
    QUANTIZED_MS,
    ToyBackend,
    ToyLayer,
    ToyNet,
    calib_batches,
    toy_net,
)

pytestmark = pytest.mark.usefixtures("toy_backend")


def fit(net: Any, **conf: Any) -> Any:
    """fit on the default path; fails on any warning but the guards' own."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantization.fit(
            net,
            PostTrainingQuantConfig(approach="static", **conf),
            calib_dataloader=calib_batches(),
        )
    guard = [w for w in caught if issubclass(w.category, GuardWarning)]
    others = [w for w in caught if not issubclass(w.category, GuardWarning)]
    assert not others, [str(w.message) for w in others]
    q.guard_warnings = [str(w.message) for w in guard]
    return q


def fallback(q: Any, why: str) -> list[str]:
    return [row["op"] for row in q.report["fallback"] if row["why"] == why]


# -- the switch ------------------------------------------------------------------------------


def test_guards_is_a_validated_config_key_that_round_trips():
    assert PostTrainingQuantConfig().guards is True
    with pytest.raises(ConfigError, match=r"guards must be True .* or False, got str 'no'"):
        PostTrainingQuantConfig(guards="no")
    data = PostTrainingQuantConfig(guards=False).to_dict()
    assert data["guards"] is False
    again = PostTrainingQuantConfig.from_dict(json.loads(json.dumps(data)))
    assert again == PostTrainingQuantConfig(guards=False)


def test_guards_off_quantizes_every_op_and_measures_nothing():
    q = fit(toy_net(types=("Add", "Add", "Add", "Conv")), guards=False)
    assert q.plan.quantized_ops() == ["add1", "add2", "add3", "conv"]
    assert q.report["fallback"] == []
    assert q.report["speed"] == {"skipped": "guards=False"}
    assert q.report["fidelity"] == {"skipped": "guards=False"}
    assert q.guard_warnings == []
    assert q.config["guards"] is False
    assert q.report["diagnosis_seconds"] >= 0.0 and "guard_seconds" not in q.report


class SlowDiagnosis(ToyBackend):
    """The per-op diagnosis takes 50 ms of every op_outputs call: a clock long enough to tell
    its share of the guards' time apart (a lower bound, no upper one: no timing assert)."""

    name = "slow-diagnosis"

    def op_outputs(self, model: ToyNet, inputs: Any, ops: Any) -> dict[str, Any]:
        time.sleep(0.05)
        return super().op_outputs(model, inputs, ops)


def test_the_diagnosis_time_is_reported_apart_from_the_guards_own():
    """``guard_seconds`` holds everything the guards did; ``diagnosis_seconds`` the part spent
    on the per-op diagnosis the report shows (fit measures it with guards=False too), so the
    guards' own cost is the difference. Both op_outputs calls (fp32 and int8) count."""
    with Registered(SlowDiagnosis):
        q = fit(toy_net())
    assert q.report["diagnosis_seconds"] >= 0.1
    assert q.report["guard_seconds"] >= q.report["diagnosis_seconds"]


# -- the speed guard -------------------------------------------------------------------------


def test_int8_faster_than_fp32_keeps_every_op_and_reports_both_times():
    q = fit(toy_net())  # Conv 0.4 + Conv 0.4 + MatMul 0.5 + Add 1.6 ms vs 4 x 1.0 ms
    assert q.plan.quantized_ops() == ["conv1", "conv2", "mm", "add"]
    speed = q.report["speed"]
    assert speed["fp32_ms"] == pytest.approx(4.0)
    assert speed["int8_ms"] == pytest.approx(2.9)
    assert speed["batch"] == 16
    assert speed["faster"] is True
    assert q.report["fallback"] == []
    assert q.guard_warnings == []


def test_an_op_type_slower_in_int8_falls_back_when_int8_is_not_faster():
    q = fit(toy_net(types=("Add", "Add", "Add", "Conv")))  # int8 5.2 ms vs fp32 4.0 ms
    assert q.plan.quantized_ops() == ["conv"]
    assert fallback(q, "slower") == ["add1", "add2", "add3"]
    row = q.report["fallback"][0]
    assert row["type"] == "Add"
    assert row["ratio_before"] == pytest.approx(5.2 / 4.0)
    assert row["ratio_after"] == pytest.approx(3.4 / 4.0)
    speed = q.report["speed"]
    assert (speed["fp32_ms"], speed["int8_ms"]) == (pytest.approx(4.0), pytest.approx(3.4))
    assert speed["default_int8_ms"] == pytest.approx(5.2)
    assert q.guard_warnings == []
    assert q.report["quantized_ops"] == 1 and q.report["float_ops"] == 3


def test_when_no_int8_build_beats_fp32_the_fp32_build_comes_back_with_a_warning():
    q = fit(toy_net(types=("Add",) * 4))  # one type: regions of ops are tried
    assert q.plan.quantized_ops() == []
    assert fallback(q, "slower") == ["add1", "add2", "add3", "add4"]
    speed = q.report["speed"]
    assert speed["returned"] == "all ops fp32"
    # the best int8 build: add1..add3 fp32, add4 int8 (4.6 ms) against fp32's 4.0 ms
    assert speed["best_int8_ratio"] == pytest.approx(4.6 / 4.0)
    assert (speed["int8_ms"], speed["ratio"]) == (pytest.approx(4.0), pytest.approx(1.0))
    last = speed["tried"][-1]
    assert (last["name"], last["fp32"], last["kept"]) == ("all ops fp32", ["add4"], True)
    (message,) = q.guard_warnings
    assert "the fastest int8 model tried was 1.15x the time of fp32" in message
    assert "the returned model has no int8 op" in message
    assert "guards=False, or an op_name_dict/op_type_dict rule asking int8, keeps int8" in message
    json.dumps(q.report, allow_nan=False)


@pytest.mark.parametrize(
    "rules",
    [
        {"op_name_dict": {"add2": {"activation": {"dtype": ["int8"]}}}},
        {"op_type_dict": {"Add": {"activation": {"dtype": "int8"}}}},
    ],
)
def test_a_rule_asking_int8_keeps_the_fastest_int8_model_with_a_warning(rules):
    q = fit(toy_net(types=("Add",) * 4), **rules)
    assert q.plan.quantized_ops(), "a rule asked int8: the guard never returns all fp32"
    assert all(row["name"] != "all ops fp32" for row in q.report["speed"]["tried"])
    assert q.report["speed"]["faster"] is False and "returned" not in q.report["speed"]
    (message,) = q.guard_warnings
    assert "x the time of fp32 on this machine" in message
    assert "Returning the fastest int8 model found" in message


def test_an_int8_build_that_only_ties_fp32_stays_int8():
    # Conv 0.4 x 3 + Add 1.6 = 2.8 ms against 4.0: faster, the fp32 build is never tried
    q = fit(toy_net(types=("Conv", "Conv", "Conv", "Add")))
    assert "all ops fp32" not in [row["name"] for row in q.report["speed"].get("tried", [])]
    assert q.plan.quantized_ops()


def test_a_model_without_int8_ops_reports_every_op_fp32():
    q = fit(toy_net(types=("Add",) * 4))
    rows = {row["op"]: row for row in q.op_report()}
    assert set(rows) == {"add1", "add2", "add3", "add4"}
    assert all(row.get("sqnr_db") is None for row in rows.values())
    assert q.report["quantized_ops"] == 0 and q.report["float_ops"] == 4


class BusyOnce(ToyBackend):
    """The toy backend on a machine that was busy while the first int8 rounds ran."""

    name = "busy"
    priority = 1
    calls = 0

    def latency(self, model: ToyNet, inputs: Any) -> float:
        value = super().latency(model, inputs)
        if model.plan is not None:
            BusyOnce.calls += 1
            if BusyOnce.calls <= speed.MIN_ROUNDS:  # the rounds of the first measurement
                value *= 3.0
        return value


@pytest.fixture
def busy_once() -> Iterator[None]:
    registry.register(BusyOnce)
    BusyOnce.calls = 0
    yield
    registry.unregister(BusyOnce.name)


def test_one_busy_measurement_is_re_measured_before_any_op_falls_back(busy_once):
    q = fit(toy_net())
    assert q.backend == "busy"
    assert q.report["fallback"] == []
    assert q.plan.quantized_ops() == ["conv1", "conv2", "mm", "add"]
    # clearly slower rounds, then a second measurement of clearly faster ones
    assert q.report["speed"]["rounds"] == speed.MIN_ROUNDS  # the second one is reported
    assert q.report["speed"]["int8_ms"] == pytest.approx(2.9)
    assert q.guard_warnings == []


class NoLatency(ToyBackend):
    name = "nolatency"
    priority = 1

    def latency(self, model: Any, inputs: Any) -> float:
        raise NotImplementedError("this backend does not measure latency")


def test_a_backend_without_latency_skips_the_speed_guard_and_says_so():
    registry.register(NoLatency)
    try:
        q = fit(toy_net(types=("Add", "Add", "Add", "Conv")))
    finally:
        registry.unregister(NoLatency.name)
    assert q.report["speed"] == {"skipped": "backend 'nolatency' has no latency"}
    assert q.plan.quantized_ops() == ["add1", "add2", "add3", "conv"]


class Registered:
    """Registers a toy backend subclass for the length of a ``with`` block."""

    def __init__(self, backend: type[ToyBackend]) -> None:
        self.backend = backend

    def __enter__(self) -> type[ToyBackend]:
        registry.register(self.backend)
        return self.backend

    def __exit__(self, *exc: object) -> None:
        registry.unregister(self.backend.name)


class Formats(ToyBackend):
    """A backend with a second build of each plan: the "fast" format runs every quantized op
    in ``FAST`` of its time; the "bad" one is as fast but its outputs are wrong."""

    name = "formats"
    priority = 1
    offer = ("fast",)
    FAST = 0.7

    def variants(self, model: ToyNet, plan: QuantPlan) -> list[tuple[str, QuantPlan]]:
        if plan.quant_format != "default":
            return []
        return [(name, dataclasses.replace(plan, quant_format=name)) for name in self.offer]

    def latency(self, model: ToyNet, inputs: Any) -> float:
        total = 0.0
        for layer in model.layers:
            op = model.plan.ops[layer.name] if model.plan is not None else None
            if op is not None and op.quantized:
                fast = model.plan is not None and model.plan.quant_format != "default"
                total += QUANTIZED_MS[layer.type] * (self.FAST if fast else 1.0)
            else:
                total += 1.0
        return total * 1e-3

    def predict(self, model: ToyNet, inputs: Any) -> np.ndarray:
        out = super().predict(model, inputs)
        return -out if model.plan is not None and model.plan.quant_format == "bad" else out


def test_clearly_faster_int8_tries_no_variant():
    with Registered(Formats):
        q = fit(toy_net())  # 2.9 vs 4.0 ms: clearly faster, another build is not worth timing
    assert q.plan.quant_format == "default"
    assert "tried" not in q.report["speed"]


def test_int8_said_faster_and_far_below_clearly_faster_tries_no_variant_on_a_busy_machine():
    class Busy(Formats):
        """Every int8 run after the first is slowed 15%: the gap between the two best rounds
        is too wide for the rounds to say 'clearly faster', though they say 'faster'."""

        name = "busy"
        int8_runs = 0

        def latency(self, model: ToyNet, inputs: Any) -> float:
            seconds = super().latency(model, inputs)
            if model.plan is None:
                return seconds
            Busy.int8_runs += 1
            return seconds * (1.0 if Busy.int8_runs == 1 else 1.15)

    with Registered(Busy):
        q = fit(toy_net())  # 2.9 vs 4.0 ms: 0.725 at best, well below CLEARLY_FASTER
    timing = speed.Timing([4e-3] * 3, [2.9e-3, 2.9e-3 * 1.15, 2.9e-3 * 1.15])
    assert timing.against(guards.CLEARLY_FASTER) is None  # the rounds alone cannot tell
    assert q.report["speed"]["verdict"] == "faster"
    assert "tried" not in q.report["speed"] and q.plan.quant_format == "default"


def test_a_variant_clearly_faster_than_the_default_build_is_kept_and_reported():
    with Registered(Formats):
        # 4.4 ms vs 5.0 ms: faster, not clearly; the "fast" build takes 0.7 x 4.4 ms
        q = fit(toy_net(types=("Conv", "Conv", "Conv", "Add", "Add")))
    assert q.plan.quant_format == "fast"
    assert q.model.plan.quant_format == "fast"  # the model handed back is that build
    (row,) = q.report["speed"]["tried"]
    assert (row["name"], row["kept"]) == ("fast", True)
    assert row["ratio"] == pytest.approx(0.7 * 4.4 / 5.0)
    assert row["sqnr_db"] >= MIN_SQNR_DB
    assert q.report["speed"]["int8_ms"] == pytest.approx(0.7 * 4.4)
    assert q.report["speed"]["default_int8_ms"] == pytest.approx(4.4)
    assert q.report["fallback"] == [] and q.guard_warnings == []
    assert q.plan.quantized_ops() == ["conv1", "conv2", "conv3", "add1", "add2"]


def test_the_fp32_search_goes_on_from_a_kept_variant():
    class Slightly(Formats):
        name = "slightly"
        FAST = 0.9

    with Registered(Slightly):
        q = fit(toy_net(types=("Add", "Add", "Add", "Conv")))  # 5.2 ms; "fast" 4.68 ms
    names = [(row["name"], row["kept"]) for row in q.report["speed"]["tried"]]
    assert names == [("fast", True), ("fp32: Add", True)]
    assert q.plan.quant_format == "fast"
    assert q.plan.quantized_ops() == ["conv"]
    assert fallback(q, "slower") == ["add1", "add2", "add3"]
    assert q.report["speed"]["int8_ms"] == pytest.approx(3.0 + 0.9 * 0.4)


def test_a_variant_below_the_fidelity_threshold_is_never_kept():
    class Bad(Formats):
        name = "bad"
        offer = ("bad",)

    with Registered(Bad):
        q = fit(toy_net(types=("Conv", "Conv", "Conv", "Add", "Add")))
    (row,) = q.report["speed"]["tried"]
    assert (row["name"], row["kept"]) == ("bad", False)
    assert row["sqnr_db"] < MIN_SQNR_DB and "ratio" not in row  # not worth timing
    assert q.plan.quant_format == "default"
    assert q.report["fidelity"]["holds"] is True


class Depthwise(ToyBackend):
    """conv2 is a depthwise conv whose int8 kernel is slow (3 ms where fp32 takes 1 ms)."""

    name = "depthwise"
    priority = 1
    groups: ClassVar[dict[str, list[str]]] = {"Conv (depthwise)": ["conv2"]}

    def kernel_groups(self, model: ToyNet) -> dict[str, list[str]]:
        return dict(self.groups)

    def latency(self, model: ToyNet, inputs: Any) -> float:
        value = super().latency(model, inputs)
        if model.plan is not None and model.plan.ops["conv2"].quantized:
            value += (3.0 - QUANTIZED_MS["Conv"]) * 1e-3
        return value


def test_a_kernel_group_is_tried_in_fp32_before_its_whole_op_type():
    with Registered(Depthwise):
        q = fit(toy_net())  # int8 5.5 ms vs 4.0: the depthwise conv alone in fp32 first
    (row,) = q.report["speed"]["tried"]
    assert (row["name"], row["kept"], row["fp32"]) == ("fp32: Conv (depthwise)", True, ["conv2"])
    assert fallback(q, "slower") == ["conv2"]
    assert q.plan.quantized_ops() == ["conv1", "mm", "add"]  # the dense conv stays int8
    assert q.guard_warnings == []


def test_a_whole_op_type_its_kernel_group_already_tried_is_not_timed_again():
    class SlowMatMul(ToyBackend):
        """Both convs are one kernel group (as all of a model's ConvTranspose ops are); the
        MatMul's int8 kernel takes 4.5 ms."""

        name = "slowmatmul"
        priority = 1

        def kernel_groups(self, model: ToyNet) -> dict[str, list[str]]:
            return {"ConvTranspose": ["conv1", "conv2"]}

        def latency(self, model: ToyNet, inputs: Any) -> float:
            value = super().latency(model, inputs)
            if model.plan is not None and model.plan.ops["mm"].quantized:
                value += (4.5 - QUANTIZED_MS["MatMul"]) * 1e-3
            return value

    with Registered(SlowMatMul):
        q = fit(toy_net(types=("Conv", "Conv", "Add", "MatMul")))  # 6.9 ms vs 4.0
    names = [(row["name"], row["kept"]) for row in q.report["speed"]["tried"]]
    # the whole Conv type is the group tried first: not built and timed again
    assert names == [("fp32: ConvTranspose", False), ("fp32: Add", True), ("fp32: MatMul", True)]
    assert q.plan.quantized_ops() == ["conv1", "conv2"]


class Recording(ToyBackend):
    """Records how many inputs each latency call timed and each op_outputs call's batch size."""

    name = "recording"
    priority = 1
    scale = 1.0
    latency_inputs: ClassVar[list[int]] = []
    op_batches: ClassVar[list[int]] = []

    def latency(self, model: ToyNet, inputs: Any) -> float:
        Recording.latency_inputs.append(len(inputs))
        return super().latency(model, inputs) * self.scale

    def op_outputs(self, model: ToyNet, inputs: Any, ops: Any) -> dict[str, Any]:
        Recording.op_batches.append(len(inputs))
        return super().op_outputs(model, inputs, ops)


def test_runs_per_round_add_up_to_long_run_seconds_at_most_calls():
    Recording.latency_inputs = []
    with Registered(Recording):
        fit(toy_net())
    assert Recording.latency_inputs[:2] == [1, speed.CALLS]  # fp32 once, then CALLS runs
    assert set(Recording.latency_inputs[2:]) == {speed.CALLS}

    class Long(Recording):
        name = "long"
        scale = 2 * speed.LONG_RUN / 4e-3  # fp32 takes 2 x LONG_RUN per batch

    Recording.latency_inputs = []
    with Registered(Long):
        q = fit(toy_net())
    assert set(Recording.latency_inputs) == {1}
    assert q.report["speed"]["latency_calls"] == len(Recording.latency_inputs)

    class Middle(Recording):
        name = "middle"
        scale = 0.6 * speed.LONG_RUN / 4e-3  # two runs make a round of LONG_RUN seconds

    Recording.latency_inputs = []
    with Registered(Middle):
        fit(toy_net())
    assert Recording.latency_inputs[0] == 1 and set(Recording.latency_inputs[1:]) == {2}


class Constant(ToyBackend):
    """A "model" here is its own milliseconds per batch."""

    name = "constant"

    def latency(self, model: Any, inputs: Any) -> float:
        return float(model) * 1e-3


def test_timing_stops_early_when_clear_of_the_ratio_the_decision_is_made_by():
    bench = speed.Bench(Constant(), 1.0, np.zeros((2, 2)))
    # 1.0 x fp32 is too close to "not faster" (0.97) to stop early; all rounds decide ...
    timing = bench.time(1.0)
    assert (len(timing.ratios), timing.verdict) == (speed.ROUNDS, "above")
    # ... but far below a current model at 1.5 x: a candidate is judged against that
    timing = bench.time(1.0, 1.5 * speed.IMPROVES)
    assert (len(timing.ratios), timing.verdict) == (speed.MIN_ROUNDS, "below")


# -- the speed guard's decision rule on noisy rounds (no clocks: constructed sequences) --------


def rounds(*ratios: float) -> tuple[list[float], list[float]]:
    """Rounds of an fp32 model at 10 ms and a candidate at ``ratio`` x that, one per ratio."""
    return [0.01] * len(ratios), [0.01 * r for r in ratios]


def test_verdict_needs_the_dead_band_and_says_tie_inside_it():
    limit = speed.NOT_FASTER
    assert speed.verdict(*rounds(0.5), limit) is None  # one round never decides
    assert speed.verdict(*rounds(0.8, 0.8), limit) is None  # two rounds never decide
    assert speed.verdict(*rounds(0.8, 0.8, 0.8), limit) == "below"  # > EARLY_BAND below
    assert speed.verdict(*rounds(0.92, 0.92, 0.92), limit) is None  # inside it: go on
    assert speed.verdict(*rounds(*[0.92] * 5), limit, final=True) == "below"  # final band
    assert speed.verdict(*rounds(*[0.96] * 5), limit, final=True) is None  # a tie
    assert speed.verdict(*rounds(*[0.98] * 5), limit, final=True) is None
    assert speed.verdict(*rounds(*[1.02] * 5), limit, final=True) == "above"


def test_verdict_leaves_out_a_busy_round_and_widens_with_the_spread():
    limit = speed.NOT_FASTER
    # the candidate's runs of one round hit by a busy machine: its best round stands
    fp32, model = rounds(0.80, 0.82, 3.0, 0.79, 0.81)
    assert speed.verdict(fp32, model, limit, final=True) == "below"
    # fp32's runs of one round hit: fp32's best round stands
    fp32, model = [0.01, 0.01, 0.04, 0.01, 0.01], [0.012] * 5
    assert speed.verdict(fp32, model, limit, final=True) == "above"
    # a best round that no other round comes near does not decide: it may be the one quiet
    # moment of a machine busy all along, or a busy moment of the other model
    fp32, model = rounds(0.80, 1.3, 1.25, 1.2, 1.3)
    assert speed.verdict(fp32, model, limit, final=True) is None


class Noisy(ToyBackend):
    """A "model" is its true milliseconds per batch; each latency call returns it slowed (load
    never speeds a run up) by a busy machine: a few percent of jitter, and in a tenth of the
    calls another process takes a core (x1.3 to x3) -- constructed, seeded sequences, no
    clock."""

    name = "noisy"
    BUSY = 0.1

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = np.random.default_rng(seed)

    def latency(self, model: Any, inputs: Any) -> float:
        slow = self.rng.uniform(1.3, 3.0) if self.rng.random() < self.BUSY else 1.0
        return float(model) * 1e-3 * slow * (1.0 + abs(self.rng.normal(0.0, 0.03)))


@pytest.mark.parametrize(
    ("true_ratio", "act", "acts"),
    [
        (0.55, "above", False),  # int8 clearly faster: never searched
        (0.80, "above", False),
        (1.20, "above", True),  # clearly slower: always searched
        (0.75, "below", True),  # a candidate clearly below the limit: always kept
        (1.10, "below", False),  # clearly above: never kept
    ],
)
def test_the_decision_is_the_same_on_every_run_of_a_busy_machine(true_ratio, act, acts):
    """The guard acts (searches for "above", keeps a candidate for "below") when the verdict is
    ``act``; 200 runs on differently busy machines all act the same way."""
    answers = set()
    for seed in range(200):
        bench = speed.Bench(Noisy(seed), 10.0, np.zeros((2, 2)))
        answers.add(bench.decide(10.0 * true_ratio, speed.NOT_FASTER, act).verdict == act)
    assert answers == {acts}


@pytest.mark.parametrize("true_ratio", [0.90, 0.94, 1.0, 1.04])
def test_near_the_limit_the_decision_is_never_the_wrong_side(true_ratio):
    """Within a few percent of the limit a run may say "tie" (which changes nothing) but never
    the side opposite to the truth: the guard acts the same way on every run."""
    wrong = "above" if true_ratio < speed.NOT_FASTER else "below"
    for act in ("above", "below"):
        for seed in range(200):
            bench = speed.Bench(Noisy(seed), 10.0, np.zeros((2, 2)))
            assert bench.decide(10.0 * true_ratio, speed.NOT_FASTER, act).verdict != wrong


def test_the_per_op_diagnosis_runs_on_a_few_samples_of_the_batch():
    Recording.op_batches = []
    with Registered(Recording):
        q = fit(toy_net())  # batches of 16
    assert Recording.op_batches and set(Recording.op_batches) == {guards.OP_SAMPLES}
    assert all(isinstance(row["sqnr_db"], float) for row in q.op_report())


# -- the fidelity guard ----------------------------------------------------------------------


def outlier_net() -> ToyNet:
    """conv2 writes one channel 100x larger than the rest, and mm reads that channel with a tiny
    weight: mm's per-tensor int8 input is all outlier and its output loses the other channels
    (the outlier-channel problem SmoothQuant addresses). conv1 and conv2 quantize well."""
    net = toy_net()
    layers = list(net.layers)
    conv2 = layers[1].weight.copy()
    conv2[:, 0] *= 100.0
    mm = layers[2].weight.copy()
    mm[0, :] *= 0.01
    layers[1] = ToyLayer("conv2", "Conv", conv2)
    layers[2] = ToyLayer("mm", "MatMul", mm)
    return ToyNet(tuple(layers))


def test_below_the_threshold_the_most_sensitive_ops_fall_back_until_it_holds():
    net = outlier_net()
    unguarded = fit(net, guards=False)
    assert unguarded.report["fallback"] == [] and unguarded.guard_warnings == []

    q = fit(net)
    fid = q.report["fidelity"]
    assert fid["before"]["sqnr_db"] < MIN_SQNR_DB
    assert fid["holds"] is True and fid["sqnr_db"] >= MIN_SQNR_DB
    ranked = [row["op"] for row in fid["ranked"]]
    sqnr = [row["sqnr_db"] for row in fid["ranked"]]
    assert ranked[0] == "mm" and sqnr[0] == min(sqnr) < MIN_SQNR_DB < max(sqnr)
    assert ranked[1] == next(iter(q.plan.ops))  # then the first op in the graph
    fell = fallback(q, "fidelity")
    assert fell == ["mm"]  # 1 op was enough
    # two ops measure below 15 dB (mm and the op after it): the first probe puts both in
    # fp32, it holds, and the bisection comes down to 1
    assert [(s["fp32_ops"], s["holds"]) for s in fid["steps"]] == [(2, True), (1, True)]
    assert q.report["fallback"][0]["sqnr_db"] == sqnr[0]
    assert q.plan.float_ops() == ["mm"]
    (message,) = q.guard_warnings
    assert "kept the" in message and "most sensitive op(s) in fp32" in message
    assert set(fid["before"]) == {"cosine", "sqnr_db", "agreement", "channel_sqnr_db"}


def test_the_warning_says_when_a_lost_channel_failed_a_passing_sqnr():
    lost = {"sqnr_db": 31.0, "cosine": 0.9995, "agreement": None, "channel_sqnr_db": -1.6}
    text = guards._metrics_text(lost)
    assert "SQNR 31.0 dB" in text and "worst channel -1.6 dB (a channel is lost)" in text
    kept = guards._metrics_text(dict(lost, channel_sqnr_db=9.2))
    assert "worst channel 9.2 dB" in kept and "lost" not in kept
    assert "channel" not in guards._metrics_text(dict(lost, channel_sqnr_db=None))


def test_fallback_order_takes_lowest_sqnr_and_earliest_in_turn():
    plan = QuantPlan(
        ops={name: OpQuant.float() for name in ("a", "b", "c", "d", "e")},
        op_types={name: "Conv" for name in ("a", "b", "c", "d", "e")},
    )
    sqnr = {"a": 40.0, "b": 35.0, "c": 8.0, "d": 12.0, "e": 30.0}
    assert fallback_order(plan, ["a", "b", "c", "d", "e"], sqnr) == ["c", "a", "d", "b", "e"]
    assert fallback_order(plan, ["b", "e"], {}) == ["b", "e"]  # unknown sqnr: graph order


def doubling(counts: list[int], holds: Any) -> int | None:
    """What the fidelity guard did before the bisection: 1, 2, 4, ... until one holds."""
    return next((i for i in range(len(counts)) if holds(i)), None)


@pytest.mark.parametrize("candidates", [1, 2, 5, 8, 34, 50, 77])
def test_the_bisection_finds_the_count_doubling_finds_from_any_first_probe(candidates: int):
    counts = guards.step_counts(candidates)
    assert counts[-1] == candidates and counts[0] == 1
    assert all(b == 2 * a for a, b in itertools.pairwise(counts[:-1]))
    for needed in range(len(counts) + 1):  # index of the smallest count that holds; none
        for first in range(len(counts)):
            probed: list[int] = []

            def holds(index: int, needed: int = needed, probed: list[int] = probed) -> bool:
                probed.append(index)
                return index >= needed

            found = guards.smallest_holding(counts, first, holds)
            assert found == doubling(counts, lambda i, n=needed: i >= n)
            assert len(probed) == len(set(probed))  # no count is built twice
            assert len(probed) <= len(counts).bit_length() + 1
            if found is None:
                assert probed[-1] == len(counts) - 1  # every ranked op was tried in fp32


def test_the_first_probe_is_the_middle_count_or_lower_when_few_ops_measure_low():
    counts = guards.step_counts(50)  # [1, 2, 4, 8, 16, 32, 50]
    ranked = [f"op{i}" for i in range(50)]
    low = MIN_SQNR_DB - 1
    assert guards.first_probe(ranked, {}, counts) == 0  # nothing measures low: 1 op first
    assert guards.first_probe(ranked, {"op0": low}, counts) == 0
    three = {f"op{i}": low for i in range(3)} | {"op9": MIN_SQNR_DB + 1}
    assert counts[guards.first_probe(ranked, three, counts)] == 2
    everything = {name: low for name in ranked}
    assert counts[guards.first_probe(ranked, everything, counts)] == 8  # the middle
    assert guards.step_counts(0) == [] and guards.step_counts(1) == [1]


def test_fidelity_fallback_finds_the_fewest_ops_of_1_2_4_that_hold():
    net = toy_net(types=("Conv", "Conv", "Conv", "MatMul", "Conv"))
    weights = [layer.weight.copy() for layer in net.layers]
    weights[0][:, 0] *= 100.0  # two outlier channels: conv2 and mm read them
    weights[1][0, :] *= 0.01
    weights[2][:, 1] *= 100.0
    weights[3][1, :] *= 0.01
    net = ToyNet(
        tuple(
            ToyLayer(layer.name, layer.type, w)
            for layer, w in zip(net.layers, weights, strict=True)
        )
    )
    q = fit(net)
    fid = q.report["fidelity"]
    steps = {s["fp32_ops"]: s["holds"] for s in fid["steps"]}
    assert steps[4] is True and steps[2] is False  # 4 is the fewest of 1, 2, 4 that holds
    assert len(steps) == len(fid["steps"])  # no count built twice
    ranked = [row["op"] for row in fid["ranked"]]
    assert fallback(q, "fidelity") == ranked[:4]
    assert {"conv2", "mm"} <= set(ranked[:4])
    assert q.plan.quantized_ops() == [op for op in q.plan.ops if op not in ranked[:4]]


def test_fidelity_report_says_what_was_compared_and_against_what():
    q = fit(toy_net())  # 4 batches of 16, fewer samples than calibration_sampling_size
    fid = q.report["fidelity"]
    assert fid["held_out"] == "last calibration batches"
    assert (fid["held_out_batches"], fid["held_out_samples"]) == (1, 16)
    assert fid["threshold"] == {"sqnr_db": 15.0, "agreement": 0.95, "channel_sqnr_db": 3.0}
    assert fid["holds"] is True
    assert {"cosine", "sqnr_db", "agreement", "outputs"} <= set(fid)
    assert fid["outputs"][0]["output"] == "output0"


def test_the_held_out_batch_never_reaches_calibration():
    batches = calib_batches()
    guarded = quantization.fit(
        toy_net(), PostTrainingQuantConfig(approach="static"), calib_dataloader=batches
    )
    by_hand = quantization.fit(
        toy_net(),
        PostTrainingQuantConfig(approach="static", guards=False),
        calib_dataloader=batches[:3],
    )
    assert guarded.model.ranges == by_hand.model.ranges


def test_split_calibration_takes_held_out_data_from_beyond_the_sampling_size():
    batches = [np.full((10, 2), i, dtype=np.float32) for i in range(6)]
    data = split_calibration(batches, 25)
    assert [len(b) for b in data.calib] == [10, 10, 5]
    assert data.how == "beyond calibration"
    # the rest of the cut batch, then whole batches until 16 samples
    assert [len(b) for b in data.held_out] == [5, 10, 10]
    assert data.held_out[0][0, 0] == 2 and data.held_out[1][0, 0] == 3

    within = split_calibration(batches, 100)
    assert (len(within.calib), len(within.held_out), within.how) == (
        5,
        1,
        "last calibration batches",
    )
    single = split_calibration(batches[:1], 100)
    assert single.how == "calibration batch reused"
    assert single.held_out[0] is single.calib[0]


def test_metrics_by_output_kind():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (32, 10))
    noisy = logits + rng.normal(0, 0.01, logits.shape)
    assert sqnr_db(logits, noisy) == pytest.approx(40, abs=1.0)
    assert sqnr_db(logits, logits) == 200.0  # clamped: JSON has no infinity
    assert sqnr_db(logits, np.full_like(logits, np.nan)) == -200.0
    assert agreement(logits, noisy) > 0.95
    assert agreement(logits, -logits) == 0.0
    # a class output with noisy values but the same ranking holds by agreement
    scaled = compare([logits], [logits * 1.5])
    assert scaled["sqnr_db"] < MIN_SQNR_DB and scaled["agreement"] == 1.0 and scaled["holds"]
    # a vector output (no class axis) has no agreement and is judged by SQNR alone
    flat = compare([{"score": logits[:, 0]}], [{"score": logits[:, 0] * 1.5}])
    assert flat["agreement"] is None and not flat["holds"]
    assert flat["outputs"][0]["output"] == "score"


# -- per-op diagnosis, report, inc.json ------------------------------------------------------


def test_op_report_rows_carry_sqnr_db_and_runs_as():
    q = fit(toy_net(types=("Add", "Add", "Add", "Conv")))
    rows = {row["op"]: row for row in q.op_report()}
    assert isinstance(rows["conv"]["sqnr_db"], float) and rows["conv"]["sqnr_db"] > 20
    assert rows["conv"]["runs_as"] == "Conv (int8)"
    assert rows["add1"]["sqnr_db"] is None  # fp32 ops have no quantization error
    assert rows["add1"]["runs_as"] == "Add (fp32)"
    assert q.report["per_op"] == q.op_report()
    json.dumps(q.report, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_guard_report_and_sqnr_db_survive_save_and_load(mlp, calib_loader, tmp_path):
    q = quantization.fit(
        mlp, PostTrainingQuantConfig(approach="static"), calib_dataloader=calib_loader
    )
    assert all(isinstance(row["sqnr_db"], float) for row in q.op_report())
    q.save(tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "inc.json").read_text())
    assert manifest["op_report"] == q.op_report()
    for key in (
        "speed",
        "fallback",
        "fidelity",
        "op_diagnosis",
        "guard_seconds",
        "diagnosis_seconds",
    ):
        assert key in manifest["report"], key
    loaded = load(tmp_path / "q")
    assert loaded.op_report() == q.op_report()
    assert loaded.report["speed"] == q.report["speed"]


def test_tuning_fills_speed_fallback_and_diagnosis_without_changing_the_choice(
    mlp, calib_loader, tmp_path
):
    def eval_func(model: Any) -> float:
        return 1.0

    conf = PostTrainingQuantConfig(approach="static")
    q = quantization.fit(
        mlp, conf, calib_dataloader=calib_loader, eval_func=eval_func, workspace=tmp_path
    )
    assert q.plan.quantized_ops() == ["fc1", "fc2"]
    assert q.report["fallback"] == []
    assert q.report["fidelity"] == {"skipped": "the evaluation given to fit decided (tuning)"}
    assert {"fp32_ms", "int8_ms", "batch"} <= set(q.report["speed"])
    assert all(isinstance(row["sqnr_db"], float) for row in q.report["per_op"])
    assert "tuning" in q.report


def test_a_dense_map_is_compared_by_sqnr_not_by_argmax_along_its_width():
    rng = np.random.default_rng(0)
    prob_map = rng.random((2, 1, 16, 16))
    logits = rng.random((4, 10))
    per_position = rng.random((2, 5, 30))
    result = compare([[prob_map, logits, per_position]], [[prob_map, logits, per_position]])
    assert ["agreement" in row for row in result["outputs"]] == [False, True, True]


@pytest.mark.parametrize("needed", [65, 70, 88, 111, 112])
def test_the_fallback_narrows_the_gap_between_doubling_steps(needed: int):
    probed: list[int] = []

    def holds(count: int) -> bool:
        probed.append(count)
        return count >= needed

    found = guards.refine(64, 112, holds)
    slack = max(int(112 * guards.REFINE_SHARE), (112 - 64) // 2**guards.REFINE_PROBES)
    assert needed <= found <= needed + slack
    assert len(probed) <= guards.REFINE_PROBES and all(64 < c < 112 for c in probed)
    assert guards.refine(3, 4, holds) == 4 and len(probed) <= guards.REFINE_PROBES  # no gap


def test_a_gap_of_a_few_ops_is_not_worth_a_build_each():
    """YOLOv8n failed with 4 and held with 8 of 77 candidates: 6 of them would take 2 builds."""
    probed: list[int] = []

    def holds(count: int) -> bool:
        probed.append(count)
        return count >= 6

    assert guards.refine(4, 8, holds, candidates=77) == 8 and probed == []
    assert guards.refine(4, 40, holds, candidates=77) <= 6 + int(77 * guards.REFINE_SHARE)
    assert 0 < len(probed) <= guards.REFINE_PROBES


def test_the_refine_probe_follows_the_measured_margins_where_it_has_them():
    """PicoDet: 8, 32 and 64 of 112 ops in fp32 measured 4.8, 10.4 and 14.5 dB (15 needed)."""
    margins = {0: -14.0, 8: -10.2, 32: -4.6, 64: -0.5, 112: None}
    assert guards.secant_probe(64, 112, margins) == 70
    probed: list[int] = []

    def holds(count: int) -> bool:
        probed.append(count)
        return count >= 70

    assert guards.refine(64, 112, holds, candidates=112, margins=margins) == 70
    assert probed == [70]  # halving the gap took 88, 76, 70
    # both ends measured: the crossing lies between them, kept off the ends
    both = {16: -7.8, 32: 4.5}
    assert 18 <= guards.secant_probe(16, 32, both) <= 30
    # a line through the ends that does not rise, or one measured count: the middle
    assert guards.secant_probe(16, 32, {16: -2.0, 32: -3.0}) == 24
    assert guards.secant_probe(64, 112, {64: -0.5, 112: None}) == 88
    # far outside the gap: kept inside its middle three quarters
    assert guards.secant_probe(64, 112, {32: -40.0, 64: -39.9}) == 112 - 48 // 8


def test_the_margin_is_the_worst_term_above_the_threshold_and_none_when_clamped():
    rows = [
        {"sqnr_db": 14.5, "agreement": 0.83, "channel_sqnr_db": 11.2},
        {"sqnr_db": 9.0, "agreement": 0.97},  # holds by agreement: its SQNR says nothing
    ]
    assert fidelity.margin_db(rows) == pytest.approx(-0.5)
    assert fidelity.margin_db([{"sqnr_db": 30.0, "channel_sqnr_db": 1.0}]) == pytest.approx(-2.0)
    assert fidelity.margin_db([{"sqnr_db": fidelity.SQNR_CLAMP_DB}]) is None


class NoisyInt8(ToyBackend):
    """Every int8 op spoils the outputs: only the model with no op int8 holds fidelity."""

    name = "noisyint8"
    priority = 1

    def predict(self, model: ToyNet, inputs: Any) -> np.ndarray:
        out = super().predict(model, inputs)
        if model.plan is not None and model.plan.quantized_ops():
            out = out + np.random.default_rng(0).normal(0, 3 * out.std(), out.shape)
        return out


def test_every_op_in_fp32_holds_without_a_comparison():
    with Registered(NoisyInt8):
        q = fit(toy_net())
    fid = q.report["fidelity"]
    assert q.plan.quantized_ops() == [] and fid["holds"] is True
    last = [s for s in fid["steps"] if s["fp32_ops"] == len(q.plan.ops)]
    assert last == [{"fp32_ops": 4, "holds": True, "compared": "no op int8"}]
    assert q.report["speed"] == {"skipped": "no op left quantized"}
    assert 0 < q.report["repair_seconds"] <= q.report["guard_seconds"]


def test_a_candidate_that_shows_no_gain_stops_at_the_fewest_rounds():
    bench = speed.Bench(Constant(), 1.0, np.zeros((2, 2)))
    # at 1.0 x fp32 against a limit of 0.97: every round runs to tell a tie from "above" ...
    assert len(bench.time(1.0, speed.NOT_FASTER).ratios) == speed.ROUNDS
    # ... which a caller keeping only "below" does not need
    timing = bench.time(1.0, speed.NOT_FASTER, below=True)
    assert (len(timing.ratios), timing.verdict) == (speed.MIN_ROUNDS, None)
    # a candidate below the limit runs on until it is clear
    assert bench.time(0.5, speed.NOT_FASTER, below=True).verdict == "below"


class SpreadInt8(ToyBackend):
    """A busy machine: int8's first round took 0.6x fp32's time and every later one 0.9x, so
    its best round is far below fp32's but its two best rounds disagree too much to tell."""

    name = "spread"
    priority = 1
    calls = 0

    def latency(self, model: ToyNet, inputs: Any) -> float:
        value = super().latency(model, inputs)
        if model.plan is not None and model.plan.quantized_ops():
            SpreadInt8.calls += 1
            value = 4e-3 * (0.6 if SpreadInt8.calls == 1 else 0.9)
        return value


def test_a_tie_below_clearly_faster_is_not_searched_for_fp32_ops():
    SpreadInt8.calls = 0
    with Registered(SpreadInt8):
        q = fit(toy_net())
    measured = q.report["speed"]
    assert measured["verdict"] == "tie" and measured["ratio"] <= guards.CLEARLY_FASTER
    assert not [row for row in measured.get("tried", []) if "fp32" in row]
    assert q.report["fallback"] == [] and len(q.plan.quantized_ops()) == 4
    assert q.guard_warnings == []


def test_a_line_that_only_shaves_the_gap_is_followed_by_a_halving():
    """MiniLM-L6 failed with 16 and held with 32 of 50; its SQNR is flat from 23 to 32, so the
    line through the margins kept landing just inside the holding end (26, 24, 23)."""
    margins: dict[int, float | None] = {8: -0.9, 16: -1.56, 32: 0.8}
    probed: list[int] = []

    def holds(count: int) -> bool:
        probed.append(count)
        margins[count] = 0.3 if count >= 23 else -1.0
        return count >= 23

    found = guards.refine(16, 32, holds, candidates=50, margins=margins)
    assert probed[0] == guards.secant_probe(16, 32, {16: -1.56, 32: 0.8}) == 26
    assert probed[1] == (16 + 26) // 2  # 26 did not halve 16..32
    assert found <= 26 and len(probed) <= 2
