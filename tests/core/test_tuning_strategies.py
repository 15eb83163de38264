"""Trial order of each strategy, pinned with scripted evaluations on the toy backend."""

from __future__ import annotations

from typing import Any

import pytest

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.tuning import TuningError

from .tuning_backend import PlanScore, Scripted, calib_batches, toy_net

FIXED_RECIPES = {
    "first_conv_or_matmul_quantization": True,
    "last_conv_or_matmul_quantization": True,
}


pytestmark = pytest.mark.usefixtures("toy_backend")


def config(strategy: str = "basic", **kw: Any) -> PostTrainingQuantConfig:
    tuning = {
        k: kw.pop(k) for k in ("max_trials", "timeout", "objective", "strategy_kwargs") if k in kw
    }
    tuning.setdefault("objective", "accuracy")
    kw.setdefault("quant_level", 1)
    return PostTrainingQuantConfig(
        approach="static", tuning_criterion=TuningCriterion(strategy=strategy, **tuning), **kw
    )


def fit(conf: PostTrainingQuantConfig, eval_func: Any, tmp_path: Any, net: Any = None, **kw: Any):
    return quantization.fit(
        net or toy_net(),
        conf,
        calib_dataloader=calib_batches(),
        eval_func=eval_func,
        workspace=tmp_path,
        **kw,
    )


def trials(report: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    """(phase, ops in fp32, status) of each trial row, baseline excluded."""
    return [(r["phase"], tuple(r["which"]), r["status"]) for r in report["trials"][1:]]


def fp32_sets(scripted: Scripted) -> list[tuple[str, ...]]:
    return [tuple(p.float_ops()) for p in scripted.plans[1:]]


def quantized_choices(plan: Any) -> dict[str, tuple[str, str | None]]:
    return {
        n: (o.activation.algorithm, o.weight.granularity if o.weight else None)
        for n, o in plan.ops.items()
        if o.quantized
    }


def test_basic_order_default_recipes_options_opwise_then_accumulated(tmp_path):
    # baseline 0.9, then each candidate a little better; only the 9th meets the 1% goal
    scripted = Scripted([0.9, 0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.895])
    q = fit(config("basic"), scripted, tmp_path)
    rows = trials(q.report["tuning"])
    assert [(phase, which) for phase, which, _ in rows] == [
        ("default", ()),
        ("recipes", ("conv1",)),  # first conv/matmul in fp32
        ("recipes", ("mm",)),  # last conv/matmul in fp32: better (0.82), kept from here on
        ("Conv options", ("mm",)),  # every Conv with per-tensor weights
        ("Conv options", ("mm",)),  # every Conv with the kl algorithm: better (0.84), kept
        ("op-wise fallback", ("conv1", "mm")),
        ("op-wise fallback", ("conv2", "mm")),
        ("op-wise fallback", ("mm", "add")),
        # accumulated, ordered by the single fallbacks' losses: add (0.87), then conv2 (0.86)
        ("accumulated fallback", ("conv2", "mm", "add")),
    ]
    assert quantized_choices(scripted.plans[4])["conv1"] == ("minmax", "per_tensor")
    assert quantized_choices(scripted.plans[5])["conv2"] == ("kl", "per_channel")
    assert quantized_choices(scripted.plans[9]) == {"conv1": ("kl", "per_channel")}
    assert rows[-1][2] == "*pass"
    assert q.report["tuning"]["chosen"] == 9
    assert q.plan == scripted.plans[9]
    assert q.plan.float_ops() == ["conv2", "mm", "add"]


def test_timeout_zero_stops_at_the_first_pass(tmp_path):
    scripted = Scripted([0.9, 0.85, 0.899, 0.899])
    q = fit(config("basic"), scripted, tmp_path)
    assert len(scripted.plans) == 3  # baseline + 2 trials
    assert q.report["tuning"]["trials_used"] == 2
    assert q.report["tuning"]["stopped"] == "goal met"
    assert q.plan.float_ops() == ["conv1"]


def test_default_plan_passing_is_one_trial(tmp_path):
    scripted = Scripted([0.9, 0.9])
    q = fit(config("auto", quant_level="auto"), scripted, tmp_path)
    assert q.report["tuning"]["trials_used"] == 1
    assert q.plan.float_ops() == []


def test_max_trials_counts_every_quantize_and_evaluate(tmp_path):
    scripted = Scripted([0.9], then=0.5)
    with pytest.raises(TuningError) as info:
        fit(config("basic", max_trials=4), scripted, tmp_path)
    assert len(scripted.plans) == 1 + 4
    assert len(info.value.trials) == 1 + 4  # baseline row + 4 trials
    assert "in 4 trials (max_trials)" in str(info.value)


def test_miss_raises_with_the_closest_usable_model(tmp_path):
    # the third trial (0.88) is the closest to the goal
    scripted = Scripted([0.9, 0.80, 0.85, 0.88], then=0.70)
    with pytest.raises(TuningError) as info:
        fit(config("basic", max_trials=6), scripted, tmp_path)
    err = info.value
    assert err.best is not None
    assert err.best.plan == scripted.plans[3]
    assert err.best.plan.float_ops() == ["mm"]
    assert err.best.model(calib_batches()[0]).shape == (16, 8)  # a usable model
    assert err.best.report["tuning"]["chosen"] == 3
    message = str(err)
    assert "relative loss <= 1%" in message
    assert "trial 3 (fp32 ops: mm)" in message
    assert "lost 2.222%, 1.222% beyond the goal" in message
    assert [row["status"] for row in err.trials[1:]] == [
        "miss",
        "miss",
        "*miss",
        "miss",
        "miss",
        "miss",
    ]


def test_timeout_keeps_searching_and_picks_the_best_by_objective(tmp_path):
    # every candidate passes; objective performance: the toy's quantized Add is slower than fp32,
    # so the fastest passing plan keeps add in fp32 and quantizes everything else
    scripted = Scripted([0.9], then=0.9)
    conf = config("basic", timeout=3600, objective="performance")
    q = fit(conf, scripted, tmp_path)
    assert q.report["tuning"]["trials_used"] == len(scripted.plans) - 1 > 2
    assert q.plan.float_ops() == ["add"]
    assert q.report["tuning"]["stopped"] == "search space exhausted"


def test_timeout_with_objective_modelsize_prefers_the_most_quantized(tmp_path):
    q = fit(
        config("basic", timeout=3600, objective="modelsize"), Scripted([0.9], then=0.9), tmp_path
    )
    assert q.plan.float_ops() == []


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        # accuracy dominates: the most accurate plan (conv1, conv2, mm in fp32, loss 0)
        ({"accuracy": 1000.0, "modelsize": 1.0}, ["conv1", "conv2", "mm"]),
        # size dominates: the fully quantized default plan
        ({"accuracy": 1.0, "modelsize": 1.0}, []),
    ],
)
def test_weighted_objective(tmp_path, weights, expected):
    score = PlanScore({"conv1": 0.001, "conv2": 0.002, "mm": 0.001, "add": 0.0})
    q = fit(config("basic", timeout=3600, objective=weights), score, tmp_path)
    assert q.plan.float_ops() == expected


def test_absolute_criterion_lower_is_better(tmp_path):
    # a loss metric (lower is better), baseline 1.0, goal: at most +0.05 absolute
    crit = AccuracyCriterion(higher_is_better=False, criterion="absolute", tolerable_loss=0.05)
    scripted = Scripted([1.0, 1.2, 1.06, 0.9])
    q = fit(config("basic", accuracy_criterion=crit), scripted, tmp_path)
    assert q.report["tuning"]["trials_used"] == 3
    assert q.plan == scripted.plans[3]


def test_relative_higher_is_better_boundary_is_inclusive(tmp_path):
    scripted = Scripted([0.5, 0.495])  # exactly 1% lost
    q = fit(config("basic"), scripted, tmp_path)
    assert q.report["tuning"]["trials_used"] == 1


def test_conservative_quantizes_op_types_one_at_a_time_from_fp32(tmp_path):
    # Conv fails alone; MatMul passes (kept); Add passes on top of MatMul (kept)
    scripted = Scripted([0.9, 0.5, 0.9, 0.9])
    q = fit(config("conservative"), scripted, tmp_path)
    assert [(p, w) for p, w, _ in trials(q.report["tuning"])] == [
        ("conservative: quantize Conv", ("mm", "add")),
        ("conservative: quantize MatMul", ("conv1", "conv2", "add")),
        ("conservative: quantize Add", ("conv1", "conv2")),
    ]
    assert q.plan.float_ops() == ["conv1", "conv2"]


def test_quant_level_zero_means_conservative(tmp_path):
    scripted = Scripted([0.9, 0.9, 0.9, 0.9])
    q = fit(config("basic", quant_level=0), scripted, tmp_path)
    assert q.report["tuning"]["strategy"] == "conservative"
    assert q.plan.float_ops() == []


def test_auto_runs_default_then_conservative_then_basic_in_one_budget(tmp_path):
    # default fails; conservative finds nothing; basic starts (recipes phase) and passes
    scripted = Scripted([0.9, 0.5, 0.5, 0.5, 0.5, 0.9])
    q = fit(config("basic", quant_level="auto"), scripted, tmp_path)
    phases = [p for p, _, _ in trials(q.report["tuning"])]
    assert q.report["tuning"]["strategy"] == "auto"
    assert phases == [
        "default",
        "conservative: quantize Conv",
        "conservative: quantize MatMul",
        "conservative: quantize Add",
        "recipes",
    ]
    assert q.plan.float_ops() == ["conv1"]


def test_auto_shares_the_budget(tmp_path):
    scripted = Scripted([0.9], then=0.5)
    with pytest.raises(TuningError):
        fit(config("auto", quant_level="auto", max_trials=6), scripted, tmp_path)
    assert len(scripted.plans) == 1 + 6


def test_auto_returns_conservatives_accepted_plan(tmp_path):
    scripted = Scripted([0.9, 0.5, 0.5, 0.9, 0.9])
    q = fit(config("auto", quant_level="auto"), scripted, tmp_path)
    assert q.plan.float_ops() == ["conv1", "conv2"]
    assert q.report["tuning"]["trials_used"] == 4


def test_mse_falls_back_the_op_with_the_largest_output_error_first(tmp_path):
    # conv2 emits an outlier channel: quantizing the op after it (mm) hurts the output most,
    # then add; conv1 and conv2 alone barely change the output
    net = toy_net(outliers={"conv2": 30.0})
    scripted = Scripted([0.9, 0.5, 0.5, 0.9])
    q = fit(config("mse"), scripted, tmp_path, net=net)
    assert fp32_sets(scripted) == [(), ("mm",), ("mm", "add")]
    assert q.plan.float_ops() == ["mm", "add"]
    phases = [p for p, _, _ in trials(q.report["tuning"])]
    assert phases == ["default", "fallback by output error", "fallback by output error"]


@pytest.mark.parametrize("strategy", ["mse_v2", "sensitivity"])
@pytest.mark.parametrize(("restored", "expected"), [(0.9, ["add"]), (0.5, ["mm", "add"])])
def test_mse_v2_falls_back_by_sensitivity_then_restores(tmp_path, strategy, restored, expected):
    net = toy_net(outliers={"conv2": 30.0})
    # default fails; mm (most sensitive) alone fails; mm + add passes; then the fallen ops
    # other than the last one are restored one at a time, least sensitive first: here mm
    scripted = Scripted([0.9, 0.5, 0.5, 0.9, restored])
    q = fit(config(strategy), scripted, tmp_path, net=net)
    assert fp32_sets(scripted) == [(), ("mm",), ("mm", "add"), ("add",)]
    assert q.plan.float_ops() == expected
    assert [p for p, _, _ in trials(q.report["tuning"])][-1] == "restore mm"


def test_exhaustive_walks_the_product_of_choices_in_order(tmp_path):
    net = toy_net(types=("Conv", "MatMul"))
    scripted = Scripted([0.9], then=0.5)
    with pytest.raises(TuningError) as info:
        fit(config("exhaustive", recipes=FIXED_RECIPES), scripted, tmp_path, net=net)
    # Conv: 4 quantized choices + fp32; MatMul: 1 + fp32; all-float is not a candidate
    assert len(info.value.trials) - 1 == 5 * 2 - 1
    sets = fp32_sets(scripted)
    assert sets[:2] == [(), ("mm",)]
    assert sets[-1] == ("conv",)
    assert info.value.trials[-1]["status"] == "miss"


def test_random_is_reproducible_by_seed(tmp_path):
    def run(seed: int) -> list[Any]:
        scripted = Scripted([0.9], then=0.5)
        with pytest.raises(TuningError):
            conf = config("random", max_trials=8, strategy_kwargs={"seed": seed})
            fit(conf, scripted, tmp_path)
        return [p.key() for p in scripted.plans[1:]]

    first, again, other = run(3), run(3), run(4)
    assert first == again
    assert first != other
    assert len(set(first)) == len(first) == 8


def test_bayesian_finds_a_passing_plan_reproducibly(tmp_path):
    score = PlanScore({"conv1": 0.004, "conv2": 0.03, "mm": 0.002, "add": 0.001})

    def run() -> list[str]:
        q = fit(config("bayesian", max_trials=30), score, tmp_path)
        assert score(q.model) >= 0.9 * 0.99
        return [r["phase"] + str(r["which"]) for r in q.report["tuning"]["trials"]]

    assert run() == run()


def test_smooth_quant_alpha_list_enters_the_space(tmp_path):
    recipes = {**FIXED_RECIPES, "smooth_quant": True, "smooth_quant_args": {"alpha": [0.3, 0.5]}}
    scripted = Scripted([0.9, 0.5, 0.9])
    q = fit(config("basic", recipes=recipes), scripted, tmp_path)
    # the default plan takes the first alpha; the recipes phase tries the second
    assert scripted.plans[1].recipes["smooth_quant_args"] == {"alpha": 0.3}
    assert scripted.plans[2].recipes["smooth_quant_args"] == {"alpha": 0.5}
    assert q.plan.recipes["smooth_quant_args"] == {"alpha": 0.5}
    assert q.plan.recipes["smooth_quant"] is True


def test_unknown_strategy_kwargs_is_an_error_naming_the_allowed_keys(tmp_path):
    from inc_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"strategy_kwargs key 'sead'.*allowed: seed"):
        fit(config("basic", strategy_kwargs={"sead": 1}), Scripted([0.9]), tmp_path)
