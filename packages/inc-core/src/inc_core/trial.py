"""One trial of tuning: build a candidate, run the user's evaluation, measure it.

``Trial`` is the record of one (in the history and the trial table), ``TrialJob`` what an
executor runs (picklable); ``OutputProbe`` compares candidates' outputs
with the fp32 model's on calibration data for the ``mse`` strategies (no evaluation, no trial).
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import digest
from .backend import Backend
from .errors import ConfigError, DataError
from .session import Session
from .space import QuantPlan, TensorRanges

log = logging.getLogger(__name__)

# Latency is the fastest of this many measurements (timing noise only ever adds time); the
# spread of the fp32 model's runs is the noise a candidate must exceed to count as slower.
LATENCY_REPEATS = 3
PROBE_BATCHES = 4


def warm_latencies(backend: Backend, model: Any, inputs: Sequence[Any]) -> list[float]:
    """``LATENCY_REPEATS`` measurements after one warm-up run (session creation, kernel
    selection and caches are not the model's speed)."""
    return latencies(backend, model, inputs, LATENCY_REPEATS + 1)[1:]


@dataclass
class Evaluator:
    """The user's evaluation: ``eval_func(model)`` or the backend running ``dataloader``+``metric``."""

    eval_func: Callable[[Any], Any] | None = None
    dataloader: Iterable[Any] | None = None
    metric: Any = None

    def __call__(self, backend: Backend, native: Any) -> float:
        if self.eval_func is not None:
            value = self.eval_func(private_copy(backend.user_model(native)))
            what = "eval_func"
        else:
            assert self.dataloader is not None
            value = backend.evaluate(native, self.dataloader, self.metric)
            what = "eval_metric"
        return real_number(value, what)

    def identity(self) -> str:
        """Who evaluates, by name: the eval_func, or the metric class (recorded in the history)."""
        if self.eval_func is not None:
            return f"eval_func {digest.identity(self.eval_func)}"
        return f"eval_metric {digest.identity(type(self.metric))}"

    def first_batch_digest(self) -> str | None:
        """A digest of the eval_dataloader's first batch (None with an eval_func)."""
        if self.dataloader is None:
            return None
        for batch in self.dataloader:
            return digest.data_digest(batch)
        return None


def real_number(value: Any, what: str) -> float:
    """``value`` as a float when it is a real number: int, float, a numpy scalar or a 0-d array
    or tensor holding one; never a bool, a string or a sequence (``"0.9"`` and ``True`` are not
    accuracies)."""
    item = value
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0:
        try:  # a 0-d numpy array or framework tensor, e.g. torch's (pred == y).float().mean()
            item = value.item()
        except Exception:
            item = value
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Real):
        kind = type(value)
        name = kind.__qualname__ if kind.__module__ == "builtins" else digest.identity(kind)
        raise DataError(
            f"{what} must return a real number (int, float or a numpy scalar), got {name} {value!r}"
        )
    return float(item)


def private_copy(model: Any) -> Any:
    """A deep copy of what the user's eval_func gets, so that an eval_func that changes its model
    (zeroes weights, fuses modules in place) cannot change the fp32 model later trials are built
    from, nor a candidate that may be returned. Objects that cannot be copied are passed as they
    are (the fingerprint check after the baseline then catches a changed fp32 model)."""
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        log.debug("eval_func gets the model itself (%s cannot be copied: %s)", type(model), exc)
        return model


@dataclass
class Trial:
    """One quantize + evaluate of a candidate plan."""

    index: int
    phase: str
    plan: QuantPlan
    accuracy: float | None
    loss: float
    accuracy_met: bool
    passed: bool
    slower: bool = False
    latency: float | None = None
    size: int | None = None
    error: str | None = None
    seconds: float = 0.0
    key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.plan.key()

    @property
    def fp32_ops(self) -> list[str]:
        return self.plan.float_ops()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "phase": self.phase,
            "accuracy": self.accuracy,
            "loss": self.loss if math.isfinite(self.loss) else None,
            "accuracy_met": self.accuracy_met,
            "passed": self.passed,
            "slower": self.slower,
            "latency": self.latency,
            "size": self.size,
            "error": self.error,
            "seconds": self.seconds,
            "fp32_ops": self.fp32_ops,
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        loss = data.get("loss")
        return cls(
            index=int(data["index"]),
            phase=str(data["phase"]),
            plan=QuantPlan.from_dict(data["plan"]),
            accuracy=data.get("accuracy"),
            loss=math.inf if loss is None else float(loss),
            accuracy_met=bool(data["accuracy_met"]),
            passed=bool(data["passed"]),
            slower=bool(data.get("slower", False)),
            latency=data.get("latency"),
            size=data.get("size"),
            error=data.get("error"),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass
class TrialResult:
    accuracy: float | None = None
    latency: float | None = None
    size: int | None = None
    error: str | None = None
    seconds: float = 0.0
    model: Any = None


def measure(method: Callable[..., Any], *args: Any) -> Any:
    """A backend measurement, or None when the backend does not offer it."""
    try:
        return method(*args)
    except NotImplementedError:
        return None


def latencies(
    backend: Backend, model: Any, inputs: Sequence[Any], repeats: int = LATENCY_REPEATS
) -> list[float]:
    """``repeats`` latency measurements; empty when the backend does not measure."""
    runs = []
    for _ in range(repeats):
        value = measure(backend.latency, model, inputs)
        if value is None:
            return []
        runs.append(float(value))
    return runs


@dataclass
class TrialJob:
    """One candidate's quantize + evaluate; picklable so an executor can run it elsewhere.

    Exceptions from the user's ``eval_func`` (and from ``train_func`` for QAT) propagate;
    a failure inside the backend becomes the trial's ``error``. A job for an executor carries the
    backend's class and the config instead of the instance (whose caches, such as inference
    sessions, need be neither thread-safe nor picklable) and builds a fresh backend.
    """

    backend: Backend | None
    model: Any
    plan: QuantPlan
    ranges: TensorRanges | None
    evaluator: Evaluator
    latency_inputs: Sequence[Any] | None = None
    measure_size: bool = False
    session: Session | None = None
    keep_model: bool = False
    backend_class: type[Backend] | None = None
    conf: Any = None

    def portable(self) -> TrialJob:
        """This job for another process: the backend travels as its class."""
        if self.backend is None or self.session is not None:
            return self
        return replace(self, backend=None, backend_class=type(self.backend))

    def __call__(self) -> TrialResult:
        start = time.perf_counter()
        backend = self.backend
        if backend is None:
            assert self.backend_class is not None
            backend = self.backend_class()
            backend.check_config(self.conf)
        if self.session is not None:
            native = self.session.build(self.plan)
        else:
            assert self.ranges is not None
            try:
                native = backend.quantize(self.model, self.plan, self.ranges)
            except Exception as exc:
                return TrialResult(error=describe(exc), seconds=time.perf_counter() - start)
        try:
            accuracy = self.evaluator(backend, native)
        except Exception as exc:
            if self.evaluator.eval_func is not None or isinstance(exc, (ConfigError, DataError)):
                raise
            return TrialResult(error=describe(exc), seconds=time.perf_counter() - start)
        result = TrialResult(accuracy=accuracy)
        try:
            if self.latency_inputs is not None:
                runs = warm_latencies(backend, native, self.latency_inputs)
                result.latency = min(runs) if runs else None
            if self.measure_size:
                result.size = measure(backend.model_size, native)
        except Exception as exc:
            result.error = describe(exc)
        result.seconds = time.perf_counter() - start
        result.model = native if self.keep_model else None
        return result


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _flatten(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return np.concatenate([_flatten(v) for _, v in sorted(value.items())] or [np.zeros(0)])
    if isinstance(value, (list, tuple)):
        return np.concatenate([_flatten(v) for v in value] or [np.zeros(0)])
    return np.asarray(value, dtype=np.float64).ravel()


class OutputProbe:
    """Relative squared error of each plan's outputs against fp32 on a few calibration batches."""

    def __init__(self, session: Session, inputs: Sequence[Any]) -> None:
        self.session = session
        self.inputs = list(inputs)[:PROBE_BATCHES]
        self.reference = [_flatten(session.backend.predict(session.model, x)) for x in self.inputs]
        self.energy = sum(float((r**2).sum()) for r in self.reference) or 1.0

    def errors(self, plans: Sequence[QuantPlan]) -> list[float]:
        out = []
        for plan in plans:
            try:
                native = self.session.build(plan)
                diff = sum(
                    float(((_flatten(self.session.backend.predict(native, x)) - r) ** 2).sum())
                    for x, r in zip(self.inputs, self.reference, strict=True)
                )
                out.append(diff / self.energy)
            except (ConfigError, DataError):
                raise
            except Exception as exc:
                log.warning("output-error probe failed for a plan: %s", describe(exc))
                out.append(math.inf)
        return out
