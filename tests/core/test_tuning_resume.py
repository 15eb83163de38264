"""History and resume: a run killed mid-way and resumed ends with the same choice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inc_core import PostTrainingQuantConfig, TuningCriterion, quantization

from .tuning_backend import Killed, PlanScore, calib_batches, toy_net

SCORE = PlanScore({"conv1": 0.004, "conv2": 0.03, "mm": 0.002, "add": 0.001}, {"kl": 0.5})


pytestmark = pytest.mark.usefixtures("toy_backend")


class Counting:
    """SCORE, counting its calls; ``kill_at`` raises ``Killed`` on that call (1 = the baseline).

    One class for the killed run and the resumed one: a history remembers who evaluated, and
    resumes only with the same evaluation.
    """

    def __init__(self, inner: Any, kill_at: int = 0) -> None:
        self.inner = inner
        self.kill_at = kill_at
        self.calls = 0

    def __call__(self, model: Any) -> float:
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed(f"killed during evaluation {self.kill_at}")
        return float(self.inner(model))


def run(strategy: str, eval_func: Any, workspace: Any, timeout: float = 0, **kw: Any):
    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        tuning_criterion=TuningCriterion(
            strategy=strategy, objective="accuracy", max_trials=40, timeout=timeout
        ),
    )
    return quantization.fit(
        toy_net(outliers={"conv2": 30.0}),
        conf,
        calib_dataloader=calib_batches(),
        eval_func=eval_func,
        workspace=workspace,
        **kw,
    )


def summary(q: Any) -> list[tuple[Any, ...]]:
    return [
        (r["phase"], tuple(r["which"]), r["accuracy"], r["status"])
        for r in q.report["tuning"]["trials"]
    ]


@pytest.mark.parametrize(
    ("strategy", "kill_at", "timeout"),
    [
        ("basic", 2, 0),
        ("basic", 5, 0),
        ("basic", 7, 0),
        ("basic", 7, 3600),  # keeps searching past the first pass; best by objective
        ("auto", 4, 0),
        ("mse_v2", 4, 0),
        ("bayesian", 3, 0),
        ("random", 4, 0),
    ],
)
def test_killed_and_resumed_ends_with_the_same_choice(tmp_path, strategy, kill_at, timeout):
    straight = run(strategy, Counting(SCORE), tmp_path / "straight", timeout)
    total = straight.report["tuning"]["trials_used"]
    assert total >= kill_at - 1, "the kill must land inside the run"

    with pytest.raises(Killed):
        run(strategy, Counting(SCORE, kill_at), tmp_path / "ws", timeout)
    history = json.loads((tmp_path / "ws" / "tuning_history.json").read_text())
    done = kill_at - 2  # call 1 is the baseline; the killed call's trial is not recorded
    assert len(history["trials"]) == done

    counting = Counting(SCORE)
    resumed = run(strategy, counting, tmp_path / "ws", timeout, resume_from=tmp_path / "ws")
    assert resumed.plan == straight.plan
    assert summary(resumed) == summary(straight)
    assert counting.calls == total - done  # neither the baseline nor done trials run again
    final = json.loads((tmp_path / "ws" / "tuning_history.json").read_text())
    assert len(final["trials"]) == total


def test_resume_accepts_the_history_file_and_a_larger_budget(tmp_path):
    from inc_core.tuning import TuningError

    conf = PostTrainingQuantConfig(
        approach="static",
        quant_level=1,
        tuning_criterion=TuningCriterion(objective="accuracy", max_trials=3),
    )
    with pytest.raises(TuningError):
        quantization.fit(
            toy_net(outliers={"conv2": 30.0}),
            conf,
            calib_dataloader=calib_batches(),
            eval_func=Counting(SCORE),
            workspace=tmp_path,
        )
    counting = Counting(SCORE)
    resumed = run("basic", counting, tmp_path, resume_from=tmp_path / "tuning_history.json")
    straight = run("basic", Counting(SCORE), tmp_path / "straight")
    assert resumed.plan == straight.plan
    assert counting.calls == straight.report["tuning"]["trials_used"] - 3


def test_resuming_a_finished_run_evaluates_nothing(tmp_path):
    straight = run("basic", Counting(SCORE), tmp_path)
    counting = Counting(SCORE)
    again = run("basic", counting, tmp_path, resume_from=tmp_path)
    assert counting.calls == 0
    assert again.plan == straight.plan
    assert summary(again) == summary(straight)
