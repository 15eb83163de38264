"""Quantization-aware training: the spec's ``prepare_compression`` flow and ``training.fit``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import QuantizationAwareTrainingConfig
from .errors import ConfigError, IncError
from .model import QuantizedModel
from .quantization import Session, prepare_session
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

    train_func: Callable[[Any], Any] | None = None

    def build(self, plan: QuantPlan) -> Any:
        if self.train_func is None:
            raise IncError("training.fit needs train_func to build a quantization-aware candidate")
        prepared = self.backend.prepare_qat(self.model, plan)
        trained = self.train_func(prepared)
        return self.backend.convert_qat(prepared if trained is None else trained, plan)


class CompressionManager:
    """What ``prepare_compression`` returns: ``.model`` to train, ``.callbacks``, ``.save``."""

    def __init__(self, model: Any, conf: QuantizationAwareTrainingConfig) -> None:
        session = prepare_session(model, conf)
        self._session = QatSession(session.backend, session.model, conf, session.spaces)
        self.conf = conf
        self.plan = self._session.default_plan
        self.model: Any = session.model
        self.callbacks = Callbacks(self)
        self.quantized: QuantizedModel | None = None
        self._started = 0.0

    def _begin(self) -> None:
        self._started = time.perf_counter()
        self.model = self._session.backend.prepare_qat(self._session.model, self.plan)

    def _end(self) -> None:
        if self.model is self._session.model:
            raise IncError("callbacks.on_train_end() was called before callbacks.on_train_begin()")
        native = self._session.backend.convert_qat(self.model, self.plan)
        report = {"qat_seconds": time.perf_counter() - self._started}
        self.quantized = self._session.wrap(native, self.plan, report)

    def save(self, directory: str | Path) -> Path:
        """Save the int8 model produced at the end of training (native files + inc.json)."""
        if self.quantized is None:
            raise IncError(
                "nothing to save yet: call callbacks.on_train_end() after training first"
            )
        return self.quantized.save(directory)


def prepare_compression(model: Any, conf: QuantizationAwareTrainingConfig) -> CompressionManager:
    """Start the spec's QAT flow for ``model`` under ``conf``."""
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
    from .tuning import tune

    session = compression_manager._session
    session.train_func = train_func
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
    return result
