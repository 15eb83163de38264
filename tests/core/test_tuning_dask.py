"""Tuning on a real ``dask.distributed`` cluster (two worker processes on this machine): the
same trials and choice as a serial run, and a worker killed in the middle of a trial costs
nothing but a rerun of that trial."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .tuning_backend import PlanScore, tune_toy

distributed = pytest.importorskip(
    "distributed", reason="dask[distributed] is a test dependency of the core env (tox.ini)"
)

SCORE = PlanScore({"conv1": 0.004, "conv2": 0.03, "mm": 0.002, "add": 0.001}, {"kl": 0.5})

pytestmark = pytest.mark.usefixtures("toy_backend")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


class KillsItsWorker:
    """SCORE, except that the first evaluation of a plan keeping conv2 in fp32 kills the worker
    process running it (SIGKILL, as the OOM killer or a lost node would). A marker file makes
    it happen once across processes; the baseline, evaluated by the caller, is never killed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.caller = os.getpid()

    def __call__(self, model: Any) -> float:
        doomed = model.plan is not None and "conv2" in model.plan.float_ops()
        if doomed and os.getpid() != self.caller and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return SCORE(model)


def table(q: Any) -> list[tuple[Any, ...]]:
    return [
        (r["phase"], tuple(r["which"]), r["accuracy"], r["status"], r["fp32_ops"])
        for r in q.report["tuning"]["trials"]
    ]


@pytest.mark.parametrize("strategy", ["basic", "exhaustive"])
def test_a_dask_cluster_gives_the_serial_result(client, tmp_path, strategy):
    serial = tune_toy(strategy, SCORE, tmp_path / "serial")
    on_cluster = tune_toy(strategy, SCORE, tmp_path / "dask", executor=client.get_executor())
    assert on_cluster.plan == serial.plan
    assert table(on_cluster) == table(serial)
    assert on_cluster.report["tuning"]["chosen"] == serial.report["tuning"]["chosen"]


def test_a_worker_killed_mid_trial_reruns_that_trial(client, tmp_path):
    serial = tune_toy("basic", SCORE, tmp_path / "serial")
    assert any("conv2" in r["which"] for r in serial.report["tuning"]["trials"])
    workers = set(client.scheduler_info()["workers"])
    marker = tmp_path / "killed"
    on_cluster = tune_toy(
        "basic", KillsItsWorker(marker), tmp_path / "dask", executor=client.get_executor()
    )
    assert marker.exists(), "the doomed trial ran on a worker and killed it"
    killed = int(marker.read_text())
    assert on_cluster.plan == serial.plan
    assert table(on_cluster) == table(serial), "the killed trial ran again, once"
    client.wait_for_workers(2, timeout=120)  # the nanny replaced the worker
    assert len(set(client.scheduler_info()["workers"]) - workers) >= 1
    assert killed not in client.run(os.getpid).values(), "the killed process is no worker now"
