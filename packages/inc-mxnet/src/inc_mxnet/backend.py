"""``MxnetBackend``: inc's plugin contract over MXNet's oneDNN (MKL-DNN) int8 path.

Models: a Gluon ``HybridBlock`` (hybridized or not) or exported files, given as the path to
``<prefix>-symbol.json`` (its one ``<prefix>-NNNN.params`` sibling is used) or as a
``(symbol_file, params_file)`` pair. The quantized model is a ``gluon.SymbolBlock``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inc_core import scheme, timing
from inc_core.backend import Backend
from inc_core.calibration import create_observer
from inc_core.capability import core_algorithms
from inc_core.errors import ConfigError, DeviceNotAvailable, ModelError
from inc_core.space import (
    OpCapability,
    OpInfo,
    QuantPlan,
    TensorOptions,
    TensorRange,
    TensorRanges,
)

log = logging.getLogger(__name__)

# oneDNN int8 kernels: symmetric per-tensor activations (uint8 where the tensor is non-negative,
# int8 otherwise) and symmetric per-tensor int8 weights.
_ALGORITHMS = core_algorithms("minmax", "kl")
_ACTIVATION = TensorOptions(
    dtype=("uint8", "int8"), scheme=("sym",), granularity=("per_tensor",), algorithm=_ALGORITHMS
)
_WEIGHT = TensorOptions(dtype=("int8",), scheme=("sym",), granularity=("per_tensor",))


def _is_mxnet_object(model: Any) -> bool:
    return any(cls.__module__.split(".")[0] == "mxnet" for cls in type(model).__mro__)


# INC's recipe defaults: a recipe given with its default value changes nothing and is fine here
_RECIPE_DEFAULTS: dict[str, Any] = {
    "first_conv_or_matmul_quantization": True,
    "last_conv_or_matmul_quantization": True,
    "pre_post_process_quantization": True,
    "smooth_quant": False,
    "fast_bias_correction": False,
    "weight_correction": False,
}


def _refuse_ignored_settings(conf: Any) -> None:
    """Settings MXNet's int8 path has no use for are errors, not silently dropped."""
    if conf.reduce_range:
        raise ConfigError(
            "reduce_range=True is not available for mxnet: oneDNN's int8 kernels use the full "
            "8 bits; leave reduce_range unset (allowed: None, False)"
        )
    if conf.quant_format != "default":
        raise ConfigError(
            f"quant_format={conf.quant_format!r} is an ONNX Runtime setting; mxnet has one int8 "
            "format (allowed: 'default')"
        )
    for key, value in (getattr(conf, "recipes", None) or {}).items():
        if key not in _RECIPE_DEFAULTS or value != _RECIPE_DEFAULTS[key]:
            allowed = ", ".join(f"{k}={v}" for k, v in _RECIPE_DEFAULTS.items())
            raise ConfigError(
                f"recipes[{key!r}]={value!r} is not available for mxnet (inc-mxnet runs no "
                f"recipes); allowed: only the defaults ({allowed})"
            )


class MxnetBackend(Backend):
    name = "mxnet"
    package = "inc-mxnet"
    framework = "mxnet"
    convention = "mxnet"
    config_backends = ("default",)
    op_type_aliases = {
        "Conv": ("Convolution",),
        "Conv2D": ("Convolution",),
        "Linear": ("FullyConnected",),
        "MatMul": ("FullyConnected",),
        "Dense": ("FullyConnected",),
    }
    priority = 50

    def __init__(self) -> None:
        self._fused: dict[int, tuple[Any, Any]] = {}
        self._float_blocks: dict[int, tuple[Any, Any]] = {}

    @classmethod
    def accepts(cls, model: Any) -> bool:
        if type(model).__module__.startswith("inc_mxnet"):
            return True
        if isinstance(model, (str, Path)):
            return str(model).endswith("-symbol.json")
        if isinstance(model, tuple) and len(model) == 2:
            return all(isinstance(p, (str, Path)) for p in model) and str(model[0]).endswith(
                ".json"
            )
        return _is_mxnet_object(model)

    def load_model(self, model: Any, conf: Any) -> Any:
        from .model import from_user_model

        return from_user_model(model)

    def ops(self, model: Any) -> list[OpInfo]:
        from .graph import list_ops

        ops = list_ops(self.load_model(model, None))
        names = [op.name for op in ops]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ModelError(f"the graph has several ops named {', '.join(duplicated)}")
        return ops

    def capability(self, approach: str, device: str) -> dict[str, OpCapability]:
        if approach != "static":
            return {}  # MXNet has no dynamic quantization
        cap = OpCapability(_ACTIVATION, _WEIGHT)
        return {"Convolution": cap, "FullyConnected": cap}

    def check_config(self, conf: Any) -> None:
        if conf.device != "cpu":
            raise DeviceNotAvailable(
                f"device={conf.device!r}: MXNet's int8 kernels (oneDNN) run on the CPU only; use device='cpu'"
            )
        if getattr(conf, "approach", "static") == "dynamic":
            raise ConfigError(
                "approach='dynamic' is not available for mxnet models (MXNet has no dynamic "
                "quantization); allowed: 'static', 'auto'"
            )
        _refuse_ignored_settings(conf)
        for rules in (conf.op_type_dict or {}, conf.op_name_dict or {}):
            for rule in rules.values():
                for fields in rule.values():
                    for wanted in fields.get("scheme", ()):
                        dtypes = [d for d in fields.get("dtype", ()) if d in scheme.QUANT_DTYPES]
                        for dtype in dtypes or ["int8"]:
                            scheme.check_supported(self.convention, dtype, wanted)

    # -- graph passes, cached per float graph (a tuning run builds many candidates) --
    def _fuse(self, model: Any) -> Any:
        from .graph import fuse

        cached = self._fused.get(id(model))
        if cached is None or cached[0] is not model:
            cached = (model, fuse(model))
            self._fused[id(model)] = cached
        return cached[1]

    def _requested(
        self, plan: QuantPlan, consumers: dict[str, list[str]], tensor: str
    ) -> tuple[str, str]:
        """(algorithm, dtype) of a tensor: those of the first quantized op that reads it."""
        for name in consumers.get(tensor, []):
            op = plan.ops.get(name)
            if op is not None and op.quantized and op.activation is not None:
                return op.activation.algorithm, op.activation.dtype
        return "minmax", "uint8"

    def calibrate(self, model: Any, dataloader: Iterable[Any], plan: QuantPlan) -> TensorRanges:
        from .graph import consumers, quantize_symbol
        from .runtime import as_inputs, forward_tensors

        fused = self._fuse(model)
        _, tensors = quantize_symbol(model, fused, plan.float_ops())
        if not tensors:  # every op in fp32: nothing to calibrate
            return {}
        downstream = consumers(fused)
        observers = {
            t: create_observer(self._requested(plan, downstream, t)[0], name=t) for t in tensors
        }
        batches = (as_inputs(batch, model.data_names) for batch in dataloader)
        for values in forward_tensors(
            fused.symbol, tensors, model.arg_params, model.aux_params, batches
        ):
            for tensor, value in values.items():
                observers[tensor].update(value)
        return {t: TensorRange.of(*obs.range()) for t, obs in observers.items()}

    def quantize(self, model: Any, plan: QuantPlan, ranges: TensorRanges) -> Any:
        from .graph import consumers, quantize_params, quantize_symbol, set_calibration
        from .runtime import make_block

        if not plan.quantized_ops():
            return self._float_block(model)
        fused = self._fuse(model)
        qsym, tensors = quantize_symbol(model, fused, plan.float_ops())
        downstream = consumers(fused)
        table: dict[str, tuple[float, float]] = {}
        entry_dtypes: dict[str, str] = {}
        for tensor in tensors:
            if tensor not in ranges:
                raise ModelError(
                    f"no calibrated range for tensor {tensor!r} of the quantized graph"
                )
            lo, hi = float(ranges[tensor].min), float(ranges[tensor].max)
            table[tensor] = (lo, hi)
            _, dtype = self._requested(plan, downstream, tensor)
            if dtype == "uint8" and lo < 0:
                # uint8 would clip the negatives; oneDNN's rule for a signed tensor is int8.
                dtype = "int8"
            entry_dtypes[tensor] = dtype
        symbol = set_calibration(qsym, table, entry_dtypes, model.data_names)
        params = quantize_params(symbol, model)
        return make_block(symbol, model.data_names, params, model.aux_params)

    def _float_block(self, model: Any) -> Any:
        from .runtime import make_block

        cached = self._float_blocks.get(id(model))
        if cached is None or cached[0] is not model:
            block = make_block(model.symbol, model.data_names, model.arg_params, model.aux_params)
            cached = (model, block)
            self._float_blocks[id(model)] = cached
        return cached[1]

    def _runnable(self, model: Any) -> Any:
        from .model import FloatGraph

        return self._float_block(model) if isinstance(model, FloatGraph) else model

    def _data_names(self, model: Any) -> Sequence[str]:
        # a user's HybridBlock is traced with the input name "data"
        return tuple(getattr(model, "data_names", ("data",)))

    def predict(self, model: Any, inputs: Any) -> np.ndarray:
        from .runtime import as_inputs, run

        return run(self._runnable(model), as_inputs(inputs, self._data_names(model)))

    def user_model(self, model: Any) -> Any:
        return self._runnable(model)

    def latency(self, model: Any, inputs: Sequence[Any]) -> float:
        from .runtime import as_inputs, run

        block = self._runnable(model)
        names = self._data_names(model)
        prepared = [as_inputs(batch, names) for batch in inputs]
        # oneDNN primitives are created at a shape's first run: the helper runs it untimed first
        return timing.latency(lambda batch: run(block, batch), prepared)

    def op_outputs(self, model: Any, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        from .diagnose import fused_view, op_outputs
        from .model import FloatGraph
        from .runtime import GraphBlock, as_inputs

        names = self._data_names(model)
        feeds = as_inputs(inputs, names)
        if isinstance(model, FloatGraph):
            # fused as oneDNN runs it, so an op's output is its fused node's (conv + bn + relu)
            symbol, (args, auxs) = self._fuse(model).symbol, (model.arg_params, model.aux_params)
        elif isinstance(model, GraphBlock):
            symbol, (args, auxs) = fused_view(model.graph), model.arrays()
        else:
            return {}
        return op_outputs(symbol, names, args, auxs, feeds, ops)

    def runs_as(self, model: Any) -> dict[str, str]:
        from .diagnose import fused_view, runs_as
        from .runtime import GraphBlock

        return runs_as(fused_view(model.graph)) if isinstance(model, GraphBlock) else {}

    def model_size(self, model: Any) -> int:
        from .model import FloatGraph

        if isinstance(model, FloatGraph):
            arrays = [*model.arg_params.values(), *model.aux_params.values()]
        else:
            arrays = [p.data() for p in model.collect_params().values()]
        return int(sum(a.size * np.dtype(a.dtype).itemsize for a in arrays))

    def save(self, model: Any, directory: Path) -> list[str]:
        from . import model_io

        return model_io.save(model, directory)

    def load(self, directory: Path, **kwargs: Any) -> Any:
        """A runnable ``GraphBlock`` (a ``gluon.SymbolBlock``) from the saved JSON and params."""
        from . import model_io

        return model_io.load(directory)

    def versions(self) -> dict[str, str]:
        import mxnet as mx

        return {"mxnet": mx.__version__, "numpy": np.__version__}
