"""A trial run on another process builds the same model as a local one (the contract's state
rule: a backend keeps per-run state only in ``check_config``, which a job calls on a fresh
instance). Every trial's accuracy, measured inside the job, must equal the local run's."""

from __future__ import annotations

import importlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inc_core import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion, quantization
from inc_core.tuning import TuningError

from . import kits
from .kit import Kit

_kits: dict[str, Kit] = {}


@dataclass(frozen=True)
class KitAccuracy:
    """The kit's accuracy as an eval_func that pickles: a worker process builds the kit once."""

    kit_name: str

    def __call__(self, model: Any) -> float:
        if self.kit_name not in _kits:
            module = importlib.import_module(f"{kits.__name__}.{self.kit_name}")
            _kits[self.kit_name] = module.make_kit()
        return _kits[self.kit_name].accuracy(model)


def _trials(kit: Kit, kit_name: str, workspace: Path, executor: Any = None) -> list[tuple[Any, ...]]:
    # with a timeout the search goes on past a passing candidate: three candidates built and
    # evaluated where they run; accuracy only (timing is no evidence)
    conf = PostTrainingQuantConfig(
        approach="static",
        accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=0.5),
        tuning_criterion=TuningCriterion(
            strategy="basic", max_trials=3, timeout=3600, objective="accuracy"
        ),
    )
    try:
        result = quantization.fit(
            kit.model,
            conf,
            calib_dataloader=kit.calib_loader,
            eval_func=KitAccuracy(kit_name),
            executor=executor,
            workspace=workspace,
        )
        table = result.report["tuning"]["trials"]
    except TuningError as exc:
        table = exc.trials
    return [
        (row["trial"], row.get("accuracy"), tuple(row["which"] or ()), row.get("error"))
        for row in table
    ]


def test_a_job_on_a_process_pool_builds_the_local_model(kit: Kit, kit_name: str, tmp_path: Path):
    _kits.setdefault(kit_name, kit)
    local = _trials(kit, kit_name, tmp_path / "local")
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        remote = _trials(kit, kit_name, tmp_path / "pool", executor=pool)
    assert len(local) >= 3
    assert remote == local
