"""QAT on a module that a trainer owns: fake quantization swapped in place, int8 from a copy.

Lightning and the Hugging Face Trainer hold the module (and, for HF, already an optimizer over
its parameters), so the callbacks cannot hand back a new model: they swap each quantized
submodule for its fake-quantized version inside the same object, keeping the Parameter
objects, and convert a copy at the end so training can go on (``fit`` twice works).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from torch import nn

from inc_core.config import QuantizationAwareTrainingConfig
from inc_core.errors import ConfigError, IncError
from inc_core.model import QuantizedModel
from inc_core.rules import build_space, default_plan
from inc_core.space import QuantPlan

from . import qat
from .backend import TorchBackend
from .info import info_of


def plan_for(model: nn.Module, conf: QuantizationAwareTrainingConfig) -> QuantPlan:
    """The default QAT plan for ``model`` under ``conf`` (rules resolved by the core)."""
    if not isinstance(conf, QuantizationAwareTrainingConfig):
        raise ConfigError(
            f"QuantizationCallback takes a QuantizationAwareTrainingConfig, got {type(conf).__name__}"
        )
    backend = TorchBackend()
    backend.check_config(conf)
    ops = backend.ops(model)
    spaces = build_space(
        ops, {"static": backend.capability("static", conf.device)}, conf, backend.op_type_aliases
    )
    return default_plan(spaces, conf)


class InPlaceQat:
    """The state both callbacks share: the plan, whether the module is prepared, the result."""

    def __init__(self, conf: QuantizationAwareTrainingConfig) -> None:
        if not isinstance(conf, QuantizationAwareTrainingConfig):
            raise ConfigError(
                f"QuantizationCallback takes a QuantizationAwareTrainingConfig, got {type(conf).__name__}"
            )
        self.conf = conf
        self.plan: QuantPlan | None = None
        self.quantized: QuantizedModel | None = None
        #: the fp32 model's state dict before fake quantization went in: the same Parameter
        #: objects, which training updates, under the fp32 model's names
        self.fp32_state: dict[str, Any] | None = None
        self._started = 0.0

    def prepare(self, model: nn.Module) -> None:
        """Insert fake quantization into ``model`` unless it already has it (a second fit)."""
        existing = info_of(model)
        if existing is not None and existing.qat:
            self.plan = existing.plan
            return
        self.plan = plan_for(model, self.conf)
        self.fp32_state = model.state_dict(keep_vars=True)
        qat.prepare(model, self.plan, inplace=True)
        self._started = time.perf_counter()

    def convert(self, model: nn.Module, exclude: dict[int, Any] | None = None) -> QuantizedModel:
        """The int8 model from a copy of ``model`` (``exclude``: objects not to copy, by id)."""
        if self.plan is None or info_of(model) is None:
            raise IncError(
                "the model has no fake quantization: the callback's prepare step never ran"
            )
        work = copy.deepcopy(model, dict(exclude or {}))
        native = qat.convert(work, self.plan, inplace=True)
        self.quantized = QuantizedModel(
            model=native,
            backend=TorchBackend.name,
            plan=self.plan,
            config=self.conf.to_dict(),
            report={"qat_seconds": time.perf_counter() - self._started},
        )
        return self.quantized

    def trained_fp32_state(self, model: nn.Module) -> dict[str, Any] | None:
        """The trained weights under the fp32 model's names (loadable without inc), or None
        when some of the fp32 model's tensors are no longer in ``model``."""
        if self.fp32_state is None:
            return None
        live = {id(t) for t in model.state_dict(keep_vars=True).values()}
        if any(id(t) not in live for t in self.fp32_state.values()):
            return None
        return {name: t.detach() for name, t in self.fp32_state.items()}

    def save(self, directory: str | Path) -> Path:
        if self.quantized is None:
            raise IncError("nothing to save yet: the int8 model exists once training has ended")
        return self.quantized.save(directory)
