"""Errors, the latency guard, the report and the progress bar of accuracy-aware tuning."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import numpy as np
import pytest

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.errors import ConfigError, DataError
from inc_core.progress import Progress
from inc_core.tuning import TuningError

from .tuning_backend import KillAt, Killed, PlanScore, Scripted, calib_batches, toy_net

pytestmark = pytest.mark.usefixtures("toy_backend")


def config(strategy: str = "basic", **tuning: Any) -> PostTrainingQuantConfig:
    tuning.setdefault("objective", "accuracy")
    return PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        tuning_criterion=TuningCriterion(strategy=strategy, **tuning),
    )


def fit(conf: Any, eval_func: Any, tmp_path: Any, net: Any = None, **kw: Any):
    return quantization.fit(
        net or toy_net(),
        conf,
        calib_dataloader=calib_batches(),
        eval_func=eval_func,
        workspace=tmp_path,
        **kw,
    )


def test_eval_func_exception_propagates_with_its_traceback(tmp_path):
    score = KillAt(PlanScore({"conv2": 0.5}), at=3)
    with pytest.raises(Killed, match="killed during evaluation 3") as info:
        fit(config(), score, tmp_path)
    assert any(
        frame.name == "__call__" and "tuning_backend" in str(frame.path) for frame in info.traceback
    )
    history = json.loads((tmp_path / "tuning_history.json").read_text())
    assert len(history["trials"]) == 1  # trial 1 done; trial 2 was being evaluated


def test_eval_func_returning_a_non_number_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"eval_func must return a real number.*'high'"):
        fit(config(), lambda model: "high", tmp_path)


def test_backend_failure_is_recorded_and_tuning_goes_on(tmp_path):
    net = toy_net(broken=["mm"])
    score = PlanScore({"conv1": 0.001})
    q = fit(config(), score, tmp_path, net=net)
    rows = q.report["tuning"]["trials"]
    assert rows[1]["status"] == "error"
    assert "no int8 kernel for mm" in rows[1]["error"]
    assert rows[1]["accuracy"] is None
    # the recipes phase's "last conv/matmul in fp32" keeps mm in fp32 and works
    assert q.plan.float_ops() == ["mm"]
    assert "no int8 kernel for mm" in q.report["tuning"]["table"]


def test_every_candidate_failing_still_raises_with_the_table(tmp_path):
    net = toy_net(types=("MatMul",), broken=["mm"])
    with pytest.raises(
        TuningError,
        match=r"every candidate failed: RuntimeError: no int8 kernel for mm.*no model to return: "
        r"building the default int8 model failed",
    ) as info:
        fit(config(), PlanScore({}), tmp_path, net=net)
    assert info.value.best is None
    assert [r["status"] for r in info.value.trials[1:]] == ["error"]
    assert "no int8 kernel for mm" in info.value.trials[1]["error"]


def test_a_one_shot_eval_dataloader_is_refused(tmp_path):
    class Metric:
        def reset(self) -> None: ...
        def update(self, pred: Any, label: Any) -> None: ...
        def result(self) -> float:
            return 1.0

    batches = ((x, np.zeros(len(x))) for x in calib_batches())
    with pytest.raises(DataError, match="one-shot iterator"):
        quantization.fit(
            toy_net(),
            config(),
            calib_dataloader=calib_batches(),
            eval_dataloader=batches,
            eval_metric=Metric(),
            workspace=tmp_path,
        )


def test_eval_dataloader_and_metric_path(tmp_path):
    net = toy_net(outliers={"conv2": 30.0})
    x = np.concatenate(calib_batches())
    reference = net(x)

    class Closeness:
        """1 - relative squared error against the fp32 outputs (the labels)."""

        def reset(self) -> None:
            self.err = self.energy = 0.0

        def update(self, pred: Any, label: Any) -> None:
            self.err += float(((pred - label) ** 2).sum())
            self.energy += float((label**2).sum())

        def result(self) -> float:
            return 1.0 - self.err / self.energy

    loader = [(x[i : i + 16], reference[i : i + 16]) for i in range(0, len(x), 16)]
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=0.0002),
        tuning_criterion=TuningCriterion(objective="accuracy"),
    )
    q = quantization.fit(
        net,
        conf,
        calib_dataloader=calib_batches(),
        eval_dataloader=loader,
        eval_metric=Closeness(),
        workspace=tmp_path,
    )
    metric = Closeness()
    metric.reset()
    for inputs, label in loader:
        metric.update(q.model(inputs), label)
    assert 1.0 - metric.result() <= 0.0002
    assert q.report["tuning"]["trials"][1]["status"] == "miss"  # plain int8 misses
    assert q.plan.float_ops()


def test_latency_guard_slower_candidates_never_win_and_slow_types_are_dropped(tmp_path):
    # add1, add2 quantized run slower than fp32 (1.6 ms vs 1.0 ms each); mm runs faster.
    net = toy_net(types=("Add", "Add", "MatMul"))
    scripted = Scripted([0.9], then=0.9)  # every candidate meets the accuracy goal
    q = fit(config(objective="performance"), scripted, tmp_path, net=net)
    rows = q.report["tuning"]["trials"]
    # default: 1.6 + 1.6 + 0.5 = 3.7 ms > fp32 3.0 ms: meets accuracy, still not chosen
    assert rows[1]["status"] == "slower"
    assert rows[1]["latency_ms"] == pytest.approx(3.7)
    assert q.report["tuning"]["slow_op_types"] == ["Add"]
    assert q.plan.float_ops() == ["add1", "add2"]
    assert q.model(calib_batches()[0]).shape == (16, 8)
    chosen = rows[q.report["tuning"]["chosen"]]
    assert chosen["latency_ms"] < rows[0]["latency_ms"]
    # the single fallbacks of add1 and add2 (3.1 ms vs 3.7 ms for the default plan) teach that
    # Add runs slower quantized; from then on no candidate quantizes an Add
    assert [r["status"] for r in rows[1:]] == ["slower"] * 5 + ["*pass"]
    assert rows[6]["phase"] == "accumulated fallback"
    assert rows[6]["which"] == ["add1", "add2"]


def test_latency_guard_can_be_turned_off(tmp_path):
    net = toy_net(types=("Add", "Add", "MatMul"))
    conf = config(objective="performance", strategy_kwargs={"latency_guard": False})
    q = fit(conf, Scripted([0.9], then=0.9), tmp_path, net=net)
    assert q.report["tuning"]["trials_used"] == 1
    assert q.plan.float_ops() == []


def test_only_slower_candidates_is_a_miss_that_says_so(tmp_path):
    net = toy_net(types=("Add",))
    with pytest.raises(TuningError, match="all ran slower than the fp32 model") as info:
        fit(config(objective="performance"), Scripted([0.9], then=0.9), tmp_path, net=net)
    assert info.value.best is not None
    assert info.value.best.plan.quantized_ops() == ["add"]


def test_report_table_is_in_the_model_and_in_inc_json(tmp_path):
    q = fit(config(), Scripted([0.9, 0.5, 0.9]), tmp_path / "ws")
    tuning = q.report["tuning"]
    table = tuning["table"].splitlines()
    assert table[0].split()[:4] == ["trial", "phase", "accuracy", "loss"]
    assert table[1].split()[:2] == ["fp32", "baseline"]
    assert "*pass" in table[3] and "conv1" in table[3]
    assert tuning["baseline"]["accuracy"] == 0.9
    assert tuning["fp32_ops"] == ["conv1"]
    q.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "inc.json").read_text())
    assert saved["report"]["tuning"]["trials"] == json.loads(json.dumps(tuning["trials"]))
    assert saved["report"]["tuning"]["table"] == tuning["table"]


def test_history_is_rewritten_after_every_trial(tmp_path):
    seen: list[int] = []

    def score(model: Any) -> float:
        history = tmp_path / "tuning_history.json"
        if model.plan is None:
            return 0.9
        seen.append(len(json.loads(history.read_text())["trials"]))
        return 0.5

    with pytest.raises(TuningError):
        fit(config(max_trials=4), score, tmp_path)
    assert seen == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".tuning_history.json.*"))  # no temp files left


def test_progress_plain_fallback_when_tqdm_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    stream = io.StringIO()
    bar = Progress(3, "tuning", enabled=True, stream=stream)
    bar.stage("calibrating")
    bar.update("#1 miss")
    bar.close()
    assert stream.getvalue().splitlines() == ["tuning: calibrating", "tuning: trial 1/3 #1 miss"]


def test_progress_uses_tqdm_when_installed():
    pytest.importorskip("tqdm", reason="tqdm is the optional 'progress' extra")
    stream = io.StringIO()
    bar = Progress(2, "tuning", enabled=True, stream=stream)
    bar.update("#1 pass")
    bar.close()
    assert "1/2" in stream.getvalue() and "#1 pass" in stream.getvalue()


def test_progress_is_quiet_off_a_terminal_and_when_turned_off(tmp_path, capsys):
    fit(config(), Scripted([0.9, 0.9]), tmp_path)  # progress=None, stderr is not a TTY here
    fit(config(), Scripted([0.9, 0.9]), tmp_path, progress=False)
    assert capsys.readouterr().err == ""
    fit(config(), Scripted([0.9, 0.9]), tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "tuning (basic)" in err and "*pass" in err


def test_resume_from_another_config_is_refused(tmp_path):
    with pytest.raises(TuningError):
        fit(config(max_trials=2), Scripted([0.9], then=0.5), tmp_path)
    other = PostTrainingQuantConfig(
        approach="static", quant_level=1, tuning_criterion=TuningCriterion(objective="performance")
    )
    with pytest.raises(
        ConfigError,
        match=r"written for another run: config tuning_criterion\.objective was 'accuracy', "
        r"now 'performance'",
    ):
        fit(other, Scripted([0.9], then=0.5), tmp_path / "new", resume_from=tmp_path)
    with pytest.raises(ConfigError, match="no tuning history"):
        fit(config(), Scripted([0.9]), tmp_path, resume_from=tmp_path / "missing")


def test_a_nan_accuracy_is_recorded_as_a_failed_candidate(tmp_path):
    q = fit(config(), Scripted([0.9, float("nan"), 0.9]), tmp_path)
    rows = q.report["tuning"]["trials"]
    assert rows[1]["status"] == "error" and "returned nan" in rows[1]["error"]
    assert q.report["tuning"]["chosen"] == 2


def test_the_users_rules_narrow_the_space(tmp_path):
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        op_name_dict={"conv1": {"activation": {"dtype": ["fp32"]}, "weight": {"dtype": ["fp32"]}}},
        op_type_dict={"Conv": {"weight": {"granularity": ["per_channel"]}}},
        recipes={"last_conv_or_matmul_quantization": True},
        tuning_criterion=TuningCriterion(objective="accuracy"),
    )
    scripted = Scripted([0.9], then=0.5)
    with pytest.raises(TuningError):
        fit(conf, scripted, tmp_path)
    plans = scripted.plans[1:]
    assert all(not p.ops["conv1"].quantized for p in plans)  # fixed to fp32 by op_name_dict
    for plan in plans:
        op = plan.ops["conv2"]
        assert not op.quantized or op.weight.granularity == "per_channel"
    phases = [r["phase"] for r in scripted_rows(tmp_path)]
    # conv1 is fixed in fp32, so the first switchable conv is conv2; the last-op recipe is set
    # by the user, so not tuned. Conv options only vary the activation algorithm (minmax -> kl)
    # since weights are pinned per_channel
    assert phases.count("recipes") == 1
    assert scripted_rows(tmp_path)[1]["fp32_ops"] == ["conv1", "conv2"]
    assert phases.count("Conv options") == 1


def scripted_rows(workspace: Any) -> list[dict[str, Any]]:
    return json.loads((workspace / "tuning_history.json").read_text())["trials"]
