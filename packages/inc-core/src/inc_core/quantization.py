"""``quantization.fit``: pick the backend, resolve the plan, quantize, and tune when asked."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from . import guards
from .config import PostTrainingQuantConfig
from .errors import ConfigError
from .model import QuantizedModel
from .session import Session, prepare_session, select_backend
from .weight_only import plan as weight_only_plan
from .weight_only import summary as weight_only_summary

__all__ = ["Session", "fit", "prepare_session", "select_backend"]

log = logging.getLogger(__name__)


def fit(
    model: Any,
    conf: PostTrainingQuantConfig | None = None,
    calib_dataloader: Iterable[Any] | None = None,
    calib_func: Callable[[Any], Any] | None = None,
    eval_func: Callable[[Any], float] | None = None,
    eval_dataloader: Iterable[Any] | None = None,
    eval_metric: Any = None,
    *,
    executor: Executor | None = None,
    workspace: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
) -> QuantizedModel:
    """Quantize ``model``; with an evaluation, search for the fastest model meeting the goal.

    ``model`` is a framework model object or a path. Without ``eval_func`` and without
    ``eval_dataloader``/``eval_metric``, the default plan is quantized once and returned.
    Never returns None: when tuning finds no model that meets the goal it raises
    ``inc_core.tuning.TuningError`` carrying the best candidate and the trial table.
    """
    conf = PostTrainingQuantConfig() if conf is None else conf
    if not isinstance(conf, PostTrainingQuantConfig):
        raise ConfigError(
            f"quantization.fit takes a PostTrainingQuantConfig, got {type(conf).__name__}; "
            "for QuantizationAwareTrainingConfig use inc_core.training.prepare_compression"
        )
    if eval_func is not None and (eval_dataloader is not None or eval_metric is not None):
        raise ConfigError("give either eval_func or eval_dataloader + eval_metric, not both")
    if (eval_dataloader is None) != (eval_metric is None):
        missing = "eval_metric" if eval_metric is None else "eval_dataloader"
        raise ConfigError(f"eval_dataloader and eval_metric go together: {missing} is missing")
    if conf.approach == "static" and calib_dataloader is None and calib_func is None:
        raise ConfigError(
            "approach='static' needs calibration data: pass calib_dataloader (or calib_func), "
            "or use PostTrainingQuantConfig(approach='dynamic')"
        )
    if eval_metric is not None:
        eval_metric = _checked_metric(eval_metric, conf)
    start = time.perf_counter()
    default_path = eval_func is None and eval_dataloader is None
    # the fidelity guard compares outputs on inputs the ranges never saw
    session = prepare_session(
        model, conf, calib_dataloader, calib_func, hold_out=default_path and conf.guards
    )

    sources = _sources(model)
    if default_path:
        return _with_sources(_weight_only_report(session, _quantize_once(session, start)), sources)

    from .tuning import TuningError, tune

    try:
        tuned = tune(
            session,
            eval_func=eval_func,
            eval_dataloader=eval_dataloader,
            eval_metric=eval_metric,
            executor=executor,
            workspace=workspace,
            resume_from=resume_from,
            progress=progress,
        )
    except TuningError as exc:
        if exc.best is not None:
            best = guards.after_tuning(session, exc.best)
            exc.best = _with_sources(_weight_only_report(session, best), sources)
        raise
    tuned = _weight_only_report(session, guards.after_tuning(session, tuned))
    return _with_sources(tuned, sources)


def _weight_only_report(session: Session, result: QuantizedModel) -> QuantizedModel:
    """``report["weight_only"]`` (bits, group size, algorithm per op; model size) for a
    weight-only result; other results unchanged."""
    found = weight_only_summary.summary(session.backend, session.model, result.model, result.plan)
    if found is not None:
        result.report["weight_only"] = found
    return result


def _sources(model: Any) -> tuple[str, ...]:
    """The user's model file (when given as a path): ``QuantizedModel.save`` never writes over it."""
    if isinstance(model, (str, os.PathLike)):
        return (str(Path(model).expanduser().resolve()),)
    return ()


def _with_sources(result: QuantizedModel, sources: tuple[str, ...]) -> QuantizedModel:
    return dataclasses.replace(result, sources=sources) if sources else result


def _quantize_once(session: Session, start: float) -> QuantizedModel:
    """The default path: the default plan, then the guards (unless ``guards=False``)."""
    plan = session.default_plan
    native = session.build(plan)
    checks: dict[str, Any] = {}
    if weight_only_plan.is_weight_only(plan):
        guards.weight_only_checks(session, plan, native, checks)
    elif session.conf.guards:
        plan, native = guards.run_guards(
            session, plan, native, checks, build_seconds=time.perf_counter() - start
        )
    else:
        guards.unguarded(session, plan, native, checks)
    report = {
        "quantization_seconds": time.perf_counter() - start,
        "ops": len(plan.ops),
        "quantized_ops": len(plan.quantized_ops()),
        "float_ops": len(plan.float_ops()),
        **checks,
    }
    result = session.wrap(native, plan, report)
    result.report["per_op"] = result.op_report()
    return result


def _checked_metric(eval_metric: Any, conf: PostTrainingQuantConfig) -> Any:
    """The metric as an object with reset/update/result, agreeing with the accuracy criterion."""
    from .metric import check_metric, higher_is_better

    metric = check_metric(eval_metric)
    if higher_is_better(metric) != conf.accuracy_criterion.higher_is_better:
        raise ConfigError(
            f"eval_metric {type(metric).__name__} has higher_is_better={higher_is_better(metric)} but "
            f"accuracy_criterion has higher_is_better={conf.accuracy_criterion.higher_is_better}; "
            f"set AccuracyCriterion(higher_is_better={higher_is_better(metric)})"
        )
    return metric
