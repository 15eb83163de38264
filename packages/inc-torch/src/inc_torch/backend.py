"""``TorchBackend``: the inc plugin for ``torch.nn.Module`` models.

This module is the entry point the registry loads on every ``fit``, whatever the model's
framework, so it imports no torch: each hook imports what it needs (``accepts`` only for an
object whose class comes from torch, where torch is loaded already). Importing torch here cost
about a second before an ONNX or Keras model could be quantized.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io as _io
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from inc_core import timing
from inc_core.backend import Backend
from inc_core.errors import BackendNotAvailable, DataError, DeviceNotAvailable, ModelError
from inc_core.space import Capability, OpInfo, QuantPlan, TensorRanges
from inc_core.weight_only.plan import is_weight_only

from .aliases import OP_TYPE_ALIASES

if TYPE_CHECKING:
    from torch import nn

# Without torch the plugin still fails to load, as it did when it imported torch here: the
# registry then skips it saying "torch is not installed" (find_spec looks, imports nothing).
if importlib.util.find_spec("torch") is None:
    importlib.import_module("torch")  # raises the ModuleNotFoundError the registry reports


class TorchBackend(Backend):
    name = "pytorch"
    package = "inc-torch"
    framework = "pytorch"
    convention = "pytorch"
    config_backends = ("default", "ipex")
    op_type_aliases: ClassVar = OP_TYPE_ALIASES
    priority = 10
    supports_qat = True
    #: ``nn.Linear`` (and transformers' GPT-2 ``Conv1D``) as ``weight_only.WeightOnlyLinear``
    supports_weight_only = True

    def __init__(self) -> None:
        self._config_backend = "default"
        self._example_inputs: tuple[Any, ...] | None = None
        self._approach = "static"

    @classmethod
    def accepts(cls, model: Any) -> bool:
        # judged by the class hierarchy's modules, so a user's nn.Module subclass (defined in
        # __main__) is recognised without importing torch for other frameworks' models
        if not any(c.__module__.startswith("torch") for c in type(model).__mro__):
            return False
        from torch import nn  # imported already: the model's class comes from torch

        return isinstance(model, nn.Module)

    # -- configuration -------------------------------------------------------------------------
    def check_config(self, conf: Any) -> None:
        # the run's state, read here only (a trial on an executor calls nothing else first):
        # the engine conf.backend picks, and the example the model is traced with (the core
        # fills conf.example_inputs with the first calibration batch when the user gave none)
        import torch

        from ._data import example_args
        from .qconfig import ENGINES

        self._config_backend = conf.backend
        self._approach = conf.approach
        example = getattr(conf, "example_inputs", None)
        self._example_inputs = example_args(example) if example is not None else None
        if conf.device == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise DeviceNotAvailable(
                "device='xpu' was requested but no Intel GPU (XPU) is available to torch "
                f"{torch.__version__} here; use device='cpu' (allowed for backend={conf.backend!r}: 'cpu', 'xpu')"
            )
        qengine = ENGINES[conf.backend][0]
        # weight-only layers run on float kernels: no quantized engine needed
        if (
            conf.approach != "weight_only"
            and qengine not in torch.backends.quantized.supported_engines
        ):
            raise BackendNotAvailable(
                f"backend={conf.backend!r} needs torch's {qengine!r} quantized engine, which this "
                f"torch build lacks; available: {', '.join(torch.backends.quantized.supported_engines)}"
            )

    def load_model(self, model: Any, conf: Any) -> nn.Module:
        import torch
        from torch import nn

        from . import _ops, checks
        from ._data import call

        if not isinstance(model, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        checks.check_model(model)
        # work on a copy: fit puts the model in eval mode, QAT trains it; the user's is untouched
        native = _ops.rooted(copy.deepcopy(model).eval())
        example = getattr(conf, "example_inputs", None)
        if example is not None:
            try:
                with torch.no_grad():
                    call(native, example)
            except Exception as exc:
                raise DataError(
                    f"example_inputs do not run through {type(model).__name__}: {_first_line(exc)}; "
                    "give one batch shaped like the model's forward() arguments"
                ) from exc
        return native

    def ops(self, model: nn.Module) -> list[OpInfo]:
        from . import _ops

        if self._approach == "weight_only":
            from .weight_only import model as weight_only

            return weight_only.weight_ops(model)
        return _ops.quantizable_ops(model)

    def capability(self, approach: str, device: str) -> Capability:
        from . import capability

        return capability.for_approach(approach, self._config_backend)

    # -- post-training -------------------------------------------------------------------------
    def calibrate(
        self, model: nn.Module, dataloader: Iterable[Any], plan: QuantPlan
    ) -> TensorRanges:
        from . import smooth_quant, static
        from ._data import example_args
        from .qconfig import Settings, quantized_engine

        batches = list(dataloader)
        if not batches:
            raise DataError("calib_dataloader yielded no samples; give it at least one batch")
        if is_weight_only(plan):  # GPTQ/AWQ read their ops' inputs, nothing is observed
            from .weight_only import model as weight_only

            _check_runs(model, batches[0], "calib_dataloader")
            return weight_only.collect_stats(model, plan, weight_only.calibration_run(batches))
        example = self._example_inputs or example_args(batches[0])
        _check_runs(model, batches[0], "calib_dataloader")
        settings = Settings.of(plan)
        work = copy.deepcopy(model).eval()
        scales: dict[str, np.ndarray] = {}
        mode = None
        if smooth_quant.enabled(plan):
            scales = smooth_quant.compute(work, plan, batches)
            smooth_quant.scale_weights(work, scales)
            mode = "eager" if smooth_quant.hooked(scales) else None
        with quantized_engine(settings.qengine):
            prepared = static.prepare(work, plan, settings, example, mode=mode)
            if scales:
                smooth_quant.install(prepared.model, scales)
            ranges = static.calibrate(prepared, batches)
        return {**ranges, **smooth_quant.to_ranges(scales)}

    def calibrate_with_func(
        self, model: nn.Module, calib_func: Any, plan: QuantPlan
    ) -> TensorRanges:
        import torch

        from . import static
        from .qconfig import Settings, quantized_engine

        if is_weight_only(plan):
            from .weight_only import model as weight_only

            return weight_only.collect_stats(model, plan, calib_func)
        settings = Settings.of(plan)
        with quantized_engine(settings.qengine):
            prepared = static.prepare(
                copy.deepcopy(model).eval(), plan, settings, self._example_inputs or ()
            )
            with torch.no_grad():
                calib_func(prepared.model)
        return {k: o.range() for k, o in prepared.observers.items() if o.observed}

    def quantize(self, model: nn.Module, plan: QuantPlan, ranges: TensorRanges) -> nn.Module:
        from . import build, smooth_quant

        if is_weight_only(plan):
            from .info import QuantInfo, attach
            from .weight_only import model as weight_only

            info = QuantInfo(plan=plan, mode="weight_only", example_inputs=self._example_inputs)
            return attach(weight_only.quantize(model, plan, ranges), info)
        scales, ranges = smooth_quant.from_ranges(ranges)
        return build.quantize(
            model, plan, ranges, example_inputs=self._example_inputs, smooth=scales or None
        )

    # -- running -------------------------------------------------------------------------------
    def predict(self, model: nn.Module, inputs: Any) -> np.ndarray:
        import torch

        from ._data import call, to_numpy
        from .qconfig import quantized_engine

        with torch.no_grad(), quantized_engine(_qengine_of(model)):
            return to_numpy(call(model, inputs))

    def latency(self, model: nn.Module, inputs: Sequence[Any]) -> float:
        # inputs become tensors before timing (the same for fp32 and int8); an int8 FX model
        # traces and freezes itself per shape, and oneDNN/FBGEMM pack weights and pick kernels
        # at a shape's first call: the core's helper runs each shape once untimed first
        import torch

        from ._data import as_args
        from .qconfig import quantized_engine

        batches = [as_args(batch) for batch in inputs]
        with torch.no_grad(), quantized_engine(_qengine_of(model)):
            return timing.latency(
                lambda batch: model(*batch[0], **batch[1]),
                batches,
                key=lambda batch: _signature(*batch),
            )

    def op_outputs(self, model: nn.Module, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        # an fp32 model is read after the fusions of the engine its int8 models will use
        from . import diagnosis
        from .qconfig import ENGINES

        return diagnosis.op_outputs(model, inputs, ops, ENGINES[self._config_backend][0])

    def runs_as(self, model: nn.Module) -> dict[str, str]:
        from . import diagnosis

        return diagnosis.runs_as(model)

    def model_size(self, model: nn.Module) -> int:
        import torch

        buffer = _io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.tell()

    # -- files ---------------------------------------------------------------------------------
    def save(self, model: nn.Module, directory: Path) -> list[str]:
        from . import model_io

        return model_io.save(model, directory)

    def load(self, directory: Path, **kwargs: Any) -> nn.Module:
        from . import model_io

        return model_io.load(directory, **kwargs)

    # -- quantization-aware training -----------------------------------------------------------
    def prepare_qat(self, model: nn.Module, plan: QuantPlan) -> nn.Module:
        from . import qat

        return qat.prepare(model, plan, self._example_inputs)

    def convert_qat(self, model: nn.Module, plan: QuantPlan) -> nn.Module:
        from . import qat

        return qat.convert(model, plan)

    def versions(self) -> dict[str, str]:
        import torch

        found = {"torch": torch.__version__}
        for dist in ("inc-torch", "lightning", "transformers", "intel-extension-for-pytorch"):
            try:
                found[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return found


def _qengine_of(model: nn.Module) -> str:
    import torch

    from .info import info_of
    from .qconfig import Settings

    info = info_of(model)
    return Settings.of(info.plan).qengine if info else torch.backends.quantized.engine


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Input shapes and dtypes (what makes a call of the same model take another path)."""
    import torch

    values = list(args) + [v for _, v in sorted(kwargs.items())]
    return tuple(
        (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
        for v in values
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _check_runs(model: nn.Module, batch: Any, what: str) -> None:
    """Run one batch through the fp32 model so a mismatch is reported as the data's fault."""
    import torch

    from ._data import call

    try:
        with torch.no_grad():
            call(model, batch)
    except Exception as exc:
        shapes = _describe(batch)
        raise DataError(
            f"the model cannot run on the first {what} batch ({shapes}): {_first_line(exc)}"
        ) from exc


def _describe(batch: Any) -> str:
    if isinstance(batch, dict):
        return "dict of " + ", ".join(f"{k}: {_describe(v)}" for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in batch) + ")"
    shape = getattr(batch, "shape", None)
    return (
        f"{type(batch).__name__} shape {tuple(shape)}"
        if shape is not None
        else type(batch).__name__
    )
