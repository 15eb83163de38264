"""Quantization-aware training: the spec's ``prepare_compression`` flow and ``training.fit``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import QuantizationAwareTrainingConfig
from .errors import ConfigError, IncError, ModelError
from .model import QuantizedModel
from .session import Session, prepare_session
from .space import QuantPlan


class Callbacks:
    """The hooks a training loop calls; ``on_train_begin`` inserts fake quantization,
    ``on_train_end`` converts to int8. Epoch and step hooks exist for INC compatibility."""

    def __init__(self, manager: CompressionManager) -> None:
        self._manager = manager

    def on_train_begin(self, dataloader: Any = None) -> None:
        self._manager._begin()

    def on_train_end(self) -> None:
        self._manager._end()

    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_epoch_end(self) -> None: ...
    def on_step_begin(self, batch_id: int) -> None: ...
    def on_step_end(self) -> None: ...
    def on_before_optimizer_step(self) -> None: ...
    def on_after_optimizer_step(self) -> None: ...


class QatSession(Session):
    """A session whose candidates are trained: prepare, the user's train_func, convert."""

    trains = True
    train_func: Callable[[Any], Any] | None = None

    def build(self, plan: QuantPlan) -> Any:
        if self.train_func is None:
            raise IncError("training.fit needs train_func to build a quantization-aware candidate")
        prepared = self.backend.prepare_qat(self.model, plan)
        trained = self.train_func(prepared)
        return self.backend.convert_qat(prepared if trained is None else trained, plan)


class CompressionManager:
    """What ``prepare_compression`` returns: ``.model`` to train, ``.callbacks``, ``.save``.

    The calls go in this order: ``callbacks.on_train_begin()`` (``.model`` becomes the
    fake-quantized copy to train), the user's training, ``callbacks.on_train_end()``
    (``.model`` becomes the int8 model), then ``save(dir)``. The user's fp32 model is never
    modified.
    """

    def __init__(self, model: Any, conf: QuantizationAwareTrainingConfig) -> None:
        session = prepare_session(model, conf)
        backend = type(session.backend)
        if not backend.supports_qat:
            raise ModelError(
                f"quantization-aware training is not available for {backend.framework} models "
                f"(backend {backend.name!r}); use inc_core.quantization.fit for post-training "
                "quantization"
            )
        self._session = QatSession(session.backend, session.model, conf, session.spaces)
        self.conf = conf
        self.plan = self._session.default_plan
        self.model: Any = session.model
        self.callbacks = Callbacks(self)
        self.quantized: QuantizedModel | None = None
        self._state = "prepared"  # -> "training" -> "converted"
        self._started = 0.0

    def _begin(self) -> None:
        if self._state == "training":
            raise IncError(
                "callbacks.on_train_begin() was called twice; call callbacks.on_train_end() "
                "after training, before starting again"
            )
        if self._state == "converted":
            raise IncError(
                "training already ended and the model is converted to int8; "
                "call prepare_compression(model, conf) again to train another one"
            )
        self._started = time.perf_counter()
        self.model = self._session.backend.prepare_qat(self._session.model, self.plan)
        self._state = "training"

    def _end(self) -> None:
        if self._state != "training":
            raise IncError(
                "callbacks.on_train_end() was called before callbacks.on_train_begin()"
                if self._state == "prepared"
                else "callbacks.on_train_end() was called twice"
            )
        native = self._session.backend.convert_qat(self.model, self.plan)
        report = {"qat_seconds": time.perf_counter() - self._started}
        self.quantized = self._session.wrap(native, self.plan, report)
        self.quantized.report["per_op"] = self.quantized.op_report()
        self.model = native
        self._state = "converted"

    def save(self, directory: str | Path) -> Path:
        """Save the int8 model produced at the end of training (native files + inc.json)."""
        if self.quantized is None:
            raise IncError(
                "nothing to save yet: call callbacks.on_train_begin(), train, then "
                "callbacks.on_train_end() (or training.fit) before save()"
            )
        return self.quantized.save(directory)


def prepare_compression(
    model: Any,
    conf: QuantizationAwareTrainingConfig | Sequence[QuantizationAwareTrainingConfig],
) -> CompressionManager:
    """Start the spec's QAT flow for ``model`` under ``conf``.

    INC 2.x also takes a list of configs (to combine pruning or distillation with QAT); inc
    does quantization only, so a list must hold exactly one QuantizationAwareTrainingConfig.
    """
    if isinstance(conf, (list, tuple)):
        if len(conf) != 1:
            kinds = ", ".join(type(c).__name__ for c in conf) or "nothing"
            raise ConfigError(
                f"prepare_compression got a list of {len(conf)} configs ({kinds}); inc does "
                "quantization-aware training only: pass one QuantizationAwareTrainingConfig"
            )
        conf = conf[0]
    if not isinstance(conf, QuantizationAwareTrainingConfig):
        raise ConfigError(
            f"prepare_compression takes a QuantizationAwareTrainingConfig, got {type(conf).__name__}; "
            "for post-training quantization use inc_core.quantization.fit"
        )
    return CompressionManager(model, conf)


def fit(
    compression_manager: CompressionManager,
    train_func: Callable[[Any], Any],
    eval_func: Callable[[Any], float] | None = None,
    eval_dataloader: Any = None,
    eval_metric: Any = None,
    **tuning: Any,
) -> QuantizedModel:
    """QAT with accuracy-aware tuning: each trial retrains from the fp32 weights."""
    if not isinstance(compression_manager, CompressionManager):
        raise ConfigError(
            "training.fit takes the CompressionManager from prepare_compression(model, conf), "
            f"got {type(compression_manager).__name__}"
        )
    if not callable(train_func):
        raise ConfigError(f"train_func must be callable (train_func(model)), got {train_func!r}")
    if eval_func is not None and (eval_dataloader is not None or eval_metric is not None):
        raise ConfigError("give either eval_func or eval_dataloader + eval_metric, not both")
    if (eval_dataloader is None) != (eval_metric is None):
        missing = "eval_metric" if eval_metric is None else "eval_dataloader"
        raise ConfigError(f"eval_dataloader and eval_metric go together: {missing} is missing")
    if compression_manager._state == "training":
        raise IncError(
            "training.fit runs the training itself (train_func per trial); do not call "
            "callbacks.on_train_begin() before it"
        )
    session = compression_manager._session
    session.train_func = train_func
    if eval_func is None and eval_dataloader is None:
        # Nothing to tune against: train the default plan once, as fit() quantizes once.
        start = time.perf_counter()
        plan = compression_manager.plan
        result = session.wrap(session.build(plan), plan, {})
        result.report.update(qat_seconds=time.perf_counter() - start, per_op=result.op_report())
        compression_manager.quantized = result
        compression_manager.model = result.model
        compression_manager._state = "converted"
        return result

    from .tuning import tune

    result = tune(
        session,
        eval_func=eval_func,
        eval_dataloader=eval_dataloader,
        eval_metric=eval_metric,
        **tuning,
    )
    compression_manager.quantized = result
    compression_manager.plan = result.plan
    compression_manager.model = result.model
    compression_manager._state = "converted"
    return result
