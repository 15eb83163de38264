"""``quantization.fit``: pick the backend, resolve the plan, quantize, and tune when asked."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backend as registry
from .backend import Backend
from .config import PostTrainingQuantConfig
from .data import model_inputs
from .errors import ConfigError, ModelError
from .model import QuantizedModel
from .rules import build_space, default_plan
from .space import OpSpace, QuantPlan, TensorRanges

log = logging.getLogger(__name__)


def select_backend(model: Any, conf: Any) -> Backend:
    """The backend for ``model``, checked against the config's backend and device."""
    backend = registry.for_model(model)
    if conf.backend not in backend.config_backends:
        allowed = ", ".join(repr(b) for b in backend.config_backends)
        raise ConfigError(
            f"backend={conf.backend!r} is not available for {backend.framework} models; allowed: {allowed}"
        )
    backend.check_config(conf)
    return backend


@dataclass
class Session:
    """One fp32 model being quantized: builds candidates for plans, caching calibration.

    This is the seam between ``fit`` and the tuning strategies: a strategy proposes plans, the
    session turns each into a native quantized model.
    """

    backend: Backend
    model: Any
    conf: Any
    spaces: list[OpSpace]
    calib_inputs: list[Any] | None = None
    calib_func: Callable[[Any], Any] | None = None
    _ranges: dict[str, TensorRanges] = field(default_factory=dict)

    @property
    def default_plan(self) -> QuantPlan:
        return default_plan(self.spaces, self.conf)

    def ranges_for(self, plan: QuantPlan) -> TensorRanges:
        """Calibrated ranges for the static ops of ``plan`` (computed once per algorithm mix)."""
        static = {
            n: op.activation.algorithm
            for n, op in plan.ops.items()
            if op.approach == "static" and op.activation
        }
        if not static:
            return {}
        key = repr(sorted(static.items())) + repr(
            sorted(plan.recipes.items(), key=lambda kv: kv[0])
        )
        if key not in self._ranges:
            if self.calib_inputs is not None:
                self._ranges[key] = self.backend.calibrate(self.model, self.calib_inputs, plan)
            elif self.calib_func is not None:
                self._ranges[key] = self.backend.calibrate_with_func(
                    self.model, self.calib_func, plan
                )
            else:
                raise ConfigError(
                    "static quantization needs calibration data: pass calib_dataloader (or calib_func), "
                    "or use PostTrainingQuantConfig(approach='dynamic')"
                )
        return self._ranges[key]

    def build(self, plan: QuantPlan) -> Any:
        """The native quantized model for ``plan``."""
        return self.backend.quantize(self.model, plan, self.ranges_for(plan))

    def wrap(
        self, native: Any, plan: QuantPlan, report: dict[str, Any] | None = None
    ) -> QuantizedModel:
        return QuantizedModel(
            model=native,
            backend=self.backend.name,
            plan=self.backend.effective_plan(self.model, plan),
            config=self.conf.to_dict(),
            report=report or {},
        )


def prepare_session(
    model: Any,
    conf: Any,
    calib_dataloader: Iterable[Any] | None = None,
    calib_func: Callable[[Any], Any] | None = None,
) -> Session:
    """Everything up to the first candidate: backend, native model, tuning space, calib data."""
    backend = select_backend(model, conf)
    native = backend.load_model(model, conf)
    ops = backend.ops(native)
    if not ops:
        raise ModelError(f"the model has no op that {backend.framework} can quantize")
    has_calibration = calib_dataloader is not None or calib_func is not None
    approach = conf.approach
    if approach == "auto":
        approaches = ("static", "dynamic") if has_calibration else ("dynamic",)
    else:
        approaches = (approach,)
    capabilities = {a: backend.capability(a, conf.device) for a in approaches}
    spaces = build_space(ops, capabilities, conf, backend.op_type_aliases)
    if not any(choice.quantized for s in spaces for choice in s.choices):
        types = ", ".join(sorted({op.type for op in ops}))
        if approach == "auto" and not has_calibration:
            raise ModelError(
                f"approach='auto' without calibration data means dynamic quantization, and "
                f"{backend.framework} cannot quantize any op of this model dynamically (op types: "
                f"{types}); pass calib_dataloader for static quantization"
            )
        raise ModelError(
            f"no op of the model can be quantized with approach {approach!r} on "
            f"{backend.framework}; op types in the model: {types}"
        )
    calib_inputs = None
    if calib_dataloader is not None:
        samples = (
            conf.calibration_sampling_size[0]
            if hasattr(conf, "calibration_sampling_size")
            else None
        )
        calib_inputs = list(model_inputs(calib_dataloader, samples, "calib_dataloader"))
    return Session(backend, native, conf, spaces, calib_inputs, calib_func)


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
    session = prepare_session(model, conf, calib_dataloader, calib_func)

    if eval_func is None and eval_dataloader is None:
        plan = session.default_plan
        native = session.build(plan)
        report = {
            "quantization_seconds": time.perf_counter() - start,
            "ops": len(plan.ops),
            "quantized_ops": len(plan.quantized_ops()),
            "float_ops": len(plan.float_ops()),
        }
        result = session.wrap(native, plan, report)
        result.report["per_op"] = result.op_report()
        return result

    from .tuning import tune

    return tune(
        session,
        eval_func=eval_func,
        eval_dataloader=eval_dataloader,
        eval_metric=eval_metric,
        executor=executor,
        workspace=workspace,
        resume_from=resume_from,
        progress=progress,
    )


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
