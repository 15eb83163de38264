"""Candidates evaluated on an executor: the same trials and the same choice as a serial run."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from inc_core.errors import ConfigError

from .tuning_backend import PlanScore, tune_toy

SCORE = PlanScore({"conv1": 0.004, "conv2": 0.03, "mm": 0.002, "add": 0.001}, {"kl": 0.5})


class WorkerFailure(Exception):
    pass


def fails_when_mm_is_float(model: Any) -> float:
    if model.plan is not None and "mm" in model.plan.float_ops():
        raise WorkerFailure("eval_func broke on a plan with mm in fp32")
    return SCORE(model)


pytestmark = pytest.mark.usefixtures("toy_backend")


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(max_workers=2) as executor:
        yield executor


def summary(q: Any) -> list[tuple[Any, ...]]:
    return [
        (r["phase"], tuple(r["which"]), r["accuracy"], r["status"])
        for r in q.report["tuning"]["trials"]
    ]


@pytest.mark.parametrize(
    ("strategy", "timeout"),
    [("basic", 0), ("auto", 0), ("mse", 0), ("exhaustive", 0), ("random", 0), ("basic", 3600)],
)
def test_process_pool_gives_the_serial_result(tmp_path, pool, strategy, timeout):
    serial = tune_toy(strategy, SCORE, tmp_path / "serial", timeout)
    parallel = tune_toy(strategy, SCORE, tmp_path / "pool", timeout, executor=pool)
    assert parallel.plan == serial.plan
    assert summary(parallel) == summary(serial)
    assert SCORE(parallel.model) == SCORE(serial.model)  # the returned model is rebuilt and works


def test_thread_pool_gives_the_serial_result(tmp_path):
    serial = tune_toy("basic", SCORE, tmp_path / "serial")
    with ThreadPoolExecutor(max_workers=3) as executor:
        threaded = tune_toy("basic", SCORE, tmp_path / "threads", executor=executor)
    assert summary(threaded) == summary(serial)


def test_an_eval_func_error_in_a_worker_propagates(tmp_path, pool):
    with pytest.raises(WorkerFailure, match="mm in fp32"):
        tune_toy("basic", fails_when_mm_is_float, tmp_path, executor=pool)


def test_an_unpicklable_eval_func_is_a_config_error(tmp_path, pool):
    with pytest.raises(ConfigError, match="module-level function"):
        tune_toy("basic", lambda model: SCORE(model), tmp_path, executor=pool)


def test_killed_serially_and_resumed_on_a_pool_ends_with_the_same_choice(tmp_path, pool):
    from .test_tuning_resume import Counting
    from .tuning_backend import Killed

    straight = tune_toy("basic", SCORE, tmp_path / "straight")
    with pytest.raises(Killed):
        tune_toy("basic", Counting(SCORE, kill_at=5), tmp_path / "ws")
    resumed = tune_toy(
        "basic", Counting(SCORE), tmp_path / "ws", executor=pool, resume_from=tmp_path / "ws"
    )
    assert resumed.plan == straight.plan
    assert summary(resumed) == summary(straight)
