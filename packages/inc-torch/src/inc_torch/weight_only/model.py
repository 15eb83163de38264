"""Weight-only quantization of a whole ``nn.Module``: which modules, their calibration
inputs, and the copy with ``WeightOnlyLinear`` in their place (``inc_core.weight_only.plan``'s
backend contract, torch side)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from inc_core.errors import DataError, GuardWarning, ModelError
from inc_core.space import OpInfo, QuantPlan, TensorRanges
from inc_core.weight_only import (
    InputStats,
    InputStatsCollector,
    WeightOnlyScheme,
    quantize_weights,
    schemes,
)

from .._ops import set_submodule, type_name
from . import kernels
from .linear import WeightOnlyLinear

#: Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections): a Linear whose
#: weight is stored ``(in, out)``; recognised by name so transformers need not be imported
HF_CONV1D = "Conv1D"
OP_TYPES: tuple[str, ...] = ("Linear", HF_CONV1D)


def is_weight_op(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return (
        type(module).__name__ == HF_CONV1D
        and type(module).__module__.startswith("transformers")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.dim() == 2
    )


def weight_ops(model: nn.Module) -> list[OpInfo]:
    """Every module whose weight can be held in integers, by qualified name."""
    return [
        OpInfo(name, type_name(module))
        for name, module in model.named_modules()
        if name and is_weight_op(module)
    ]


def weight_of(module: nn.Module) -> np.ndarray:
    """The weight in inc-core's layout ``(K, N)`` (``y = x @ w``) as float32 numpy."""
    weight = module.weight.detach().to(torch.float32)
    if type(module) is nn.Linear:
        weight = weight.T
    result: np.ndarray = weight.contiguous().numpy()
    return result


def _bias_of(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None


# -- calibration: the inputs of the ops GPTQ/AWQ quantize -------------------------------------


def collect_stats(
    model: nn.Module, plan: QuantPlan, run: Callable[[nn.Module], None]
) -> TensorRanges:
    """``InputStats`` per GPTQ/AWQ op of ``plan``, from its inputs while ``run(model)`` feeds
    the calibration data (forward pre-hooks; removed afterwards, the model is unchanged)."""
    collector = InputStatsCollector.for_plan(plan)
    modules = dict(model.named_modules())
    missing = [op for op in collector.ops if op not in modules]
    if missing:
        raise ModelError(f"the plan names modules the model lacks: {', '.join(missing)}")

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                raise DataError(f"module {name!r} was called without a tensor input")
            collector.add(name, x.detach().to(torch.float32).cpu().numpy())

        return record

    handles = [modules[op].register_forward_pre_hook(hook(op)) for op in collector.ops]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for handle in handles:
            handle.remove()
    try:
        stats: TensorRanges = dict(collector.result())
    except ValueError as exc:
        raise DataError(
            f"{exc}: the calibration data never reached these modules in forward()"
        ) from exc
    return stats


def calibration_run(batches: Iterable[Any]) -> Callable[[nn.Module], None]:
    from .._data import call

    def run(model: nn.Module) -> None:
        for batch in batches:
            call(model, batch)

    return run


# -- building ---------------------------------------------------------------------------------


def _copy_without(model: nn.Module, replaced: Iterable[str]) -> nn.Module:
    """``copy.deepcopy(model)`` that does not copy the weights about to be replaced (a large
    model would be held three times over): they are copied as empty tensors, unless another
    module (a tied embedding) reads them too."""
    modules = dict(model.named_modules())
    dropped = {id(modules[name].weight): modules[name] for name in replaced}
    kept = {name for name in modules if name not in set(replaced)}
    for name in kept:
        for param in modules[name].parameters(recurse=False):
            dropped.pop(id(param), None)
    memo: dict[int, Any] = {
        key: nn.Parameter(torch.empty(0), requires_grad=False) for key in dropped
    }
    result: nn.Module = copy.deepcopy(model, memo)
    return result


def quantize(
    model: nn.Module,
    plan: QuantPlan,
    ranges: TensorRanges,
    kernel: str | None = None,
) -> nn.Module:
    """A copy of ``model`` with each weight-only op of ``plan`` a ``WeightOnlyLinear`` built
    from inc-core's RTN/GPTQ/AWQ (``ranges``: ``InputStats`` for the GPTQ/AWQ ops). AWQ's
    input scale divides the layer's input inside the layer. ``model`` is not modified."""
    chosen = schemes(plan)
    modules = dict(model.named_modules())
    for name in chosen:
        if name not in modules or not is_weight_op(modules[name]):
            got = type(modules[name]).__name__ if name in modules else "no such module"
            raise ModelError(
                f"weight-only op {name!r} is not a Linear in this model ({got}); "
                f"quantizable: {', '.join(op.name for op in weight_ops(model)[:10])}"
            )
    built: dict[str, WeightOnlyLinear] = {}
    for name, scheme in chosen.items():
        module = modules[name]
        stats = ranges.get(name)
        found = quantize_weights(
            [weight_of(module)],
            scheme,
            plan.recipes,
            stats if isinstance(stats, InputStats) else None,
        )[0]
        built[name] = WeightOnlyLinear.from_quantized(
            found.weight, _bias_of(module), found.input_scale, kernel
        )
    work = _copy_without(model, built)
    for name, layer in built.items():
        set_submodule(work, name, layer)
    slow = kernels.slow_reason() if kernel is None else None
    if slow and built:
        warnings.warn(slow, GuardWarning, stacklevel=2)
    return work.eval()


def shell(module: nn.Module, scheme: WeightOnlyScheme, kernel: str | None) -> WeightOnlyLinear:
    """An empty ``WeightOnlyLinear`` shaped for ``module`` quantized with ``scheme`` (loading
    a saved model: the state dict fills it)."""
    k, n = weight_of_shape(module)
    group = k if scheme.group_size == -1 else scheme.group_size
    return WeightOnlyLinear(
        k,
        n,
        scheme.bits,
        group,
        scheme.scheme,
        bias=_bias_of(module) is not None,
        input_scale=scheme.algorithm == "AWQ",
        kernel=kernel,
    )


def weight_of_shape(module: nn.Module) -> tuple[int, int]:
    rows, cols = (int(d) for d in module.weight.shape)
    return (cols, rows) if type(module) is nn.Linear else (rows, cols)


def rebuild(
    model: nn.Module, chosen: Mapping[str, WeightOnlyScheme], kernel: str | None = None
) -> nn.Module:
    """A copy of ``model`` with empty ``WeightOnlyLinear`` layers where ``chosen`` says."""
    modules = dict(model.named_modules())
    shells = {name: shell(modules[name], scheme, kernel) for name, scheme in chosen.items()}
    work = _copy_without(model, shells)
    for name, layer in shells.items():
        set_submodule(work, name, layer)
    return work.eval()
