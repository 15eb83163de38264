"""Per-op outputs and what each op runs as: the default guards' per-op diagnosis (``sqnr_db``,
``runs_as``).

Outputs are read with forward hooks that live only for one call. An int8 FX model runs its
Python graph for that call (its frozen trace has no modules to hook); its fused modules give
the fused outputs, and the fp32 side is read from a fused copy to match (``fusion``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import QuantWrapper
from torch.nn.utils.rnn import PackedSequence

from . import frozen, fusion
from ._data import call
from .info import info_of
from .qconfig import Settings, quantized_engine
from .weight_only.linear import WeightOnlyLinear


def op_outputs(
    model: nn.Module, inputs: Any, ops: Sequence[str], qengine: str
) -> dict[str, np.ndarray]:
    """The first output of each op in ``ops`` on ``inputs``, as float numpy arrays.

    ``model`` is an fp32 model (read after FX's fusions for ``qengine``) or one inc quantized
    (read after the same fusions). Ops that are not modules of the model are left out.
    """
    info = info_of(model)
    target = model
    tails: dict[str, list[str] | None] = {}
    if info is None:
        fused = fusion.fused(model, qengine)
        target = model if fused is None else fused
    else:
        qengine = Settings.of(info.plan).qengine
        tails = {} if isinstance(model, torch.fx.GraphModule) else (info.tails or {})
    modules = dict(target.named_modules())
    wanted = [op for op in ops if op in modules and tails.get(op, []) is not None]
    seen: dict[str, torch.Tensor] = {}
    found = {}
    with (
        _hooks(modules, wanted, seen),
        frozen.python_graph(target),
        torch.no_grad(),
        quantized_engine(qengine),
    ):
        call(target, inputs)
        for op, output in seen.items():
            tail = tails.get(op)
            if tail:
                output = fusion.apply_tail(target, tail, output)
            found[op] = output.detach().float().cpu().numpy()
    return found


def runs_as(model: nn.Module) -> dict[str, str]:
    """Op -> the module torch runs for it, with its precision and engine, e.g.
    ``"QuantizedConvReLU2d (int8, x86)"``, ``"DynamicQuantizedLinear (int8 dynamic, x86)"``,
    ``"Linear (fp32)"``."""
    info = info_of(model)
    if info is None:
        return {}
    engine = Settings.of(info.plan).qengine
    modules = dict(model.named_modules())
    found = {}
    for op in info.plan.ops:
        module = modules.get(op)
        if module is not None:
            found[op] = _describe(module, engine)
    return found


def _describe(module: nn.Module, engine: str) -> str:
    if isinstance(module, QuantWrapper):
        module = module.module
    if isinstance(module, WeightOnlyLinear):
        return f"WeightOnlyLinear (int{module.bits} g{module.group_size}, {module.kernel})"
    kind = _int8_kind(module)
    if kind:
        return f"{module._get_name()} ({kind}, {engine})"
    # a float fused container (an FX-fused Linear+ReLU whose Linear was made dynamic)
    for child in module.children():
        kind = _int8_kind(child)
        if kind:
            rest = "+".join(type(c).__name__ for c in module.children() if c is not child)
            return f"{child._get_name()}{'+' + rest if rest else ''} ({kind}, {engine})"
    return f"{type(module).__name__} (fp32)"


def _int8_kind(module: nn.Module) -> str:
    where = type(module).__module__
    if ".quantized.dynamic" in where or module._get_name().startswith("DynamicQuantized"):
        return "int8 dynamic"
    if where.startswith(("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
        return "int8"
    return ""


@contextlib.contextmanager
def _hooks(
    modules: dict[str, nn.Module], ops: Sequence[str], seen: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Forward hooks keeping each op's first output in ``seen``; all removed on exit."""
    handles = []

    def keep(op: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if op not in seen:
                tensor = _first_tensor(output)
                if tensor is not None:
                    seen[op] = tensor.dequantize() if tensor.is_quantized else tensor

        return hook

    try:
        for op in ops:
            handles.append(modules[op].register_forward_hook(keep(op)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, PackedSequence):
        return output.data
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    return None
