"""Which ``torch.nn`` modules inc quantizes, under which approach: the one table of op types."""

from __future__ import annotations

from typing import Any

from torch import nn

from inc_core.space import OpInfo

#: module types quantized with calibrated activations (FX or eager static path)
STATIC_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: module types ``torch.ao.quantization.quantize_dynamic`` swaps (weights int8, activations at run time)
DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.LSTM,
    nn.GRU,
    nn.LSTMCell,
    nn.GRUCell,
    nn.RNNCell,
)
#: module types whose weight torch can hold per channel in dynamic quantization
DYNAMIC_PER_CHANNEL: tuple[str, ...] = ("Linear",)

QUANTIZABLE: tuple[type[nn.Module], ...] = tuple(dict.fromkeys(STATIC_TYPES + DYNAMIC_TYPES))


#: the op name of a model that is itself one quantizable module (see ``Root``)
ROOT = "module"


class Root(nn.Module):
    """A model that is itself one quantizable module (``fit(nn.Linear(64, 10))``), held as
    the only child ``module``: it becomes an op named ``ROOT`` like any submodule, and the
    int8 model is this wrapper around the int8 module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Any) -> Any:  # one named input: FX traces it (not *args)
        return self.module(x)


class RootRNN(Root):
    """``Root`` of an LSTM/GRU/cell, which take an optional state (dynamic only: not traced)."""

    def forward(self, *args: Any) -> Any:
        return self.module(*args)


def rooted(model: nn.Module) -> nn.Module:
    """``model`` wrapped in ``Root`` when it is itself a quantizable module, else ``model``."""
    if type(model) in STATIC_TYPES:
        return Root(model)
    return RootRNN(model) if type(model) in QUANTIZABLE else model


def type_name(module: nn.Module) -> str:
    return type(module).__name__


def quantizable_ops(model: nn.Module) -> list[OpInfo]:
    """Every quantizable submodule by qualified name (as ``model.named_modules()`` spells it).

    Submodules already quantized (or being trained with fake quantization) are not listed.
    """
    ops = []
    for name, module in model.named_modules():
        if name and type(module) in QUANTIZABLE:
            ops.append(OpInfo(name, type_name(module)))
    return ops


def submodule(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at ``name`` (a dotted path) with ``new`` in place."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
