"""Model inputs as torch wants them, and model outputs as numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


def to_torch(value: Any) -> Any:
    """numpy arrays (nested in tuples, lists, dicts) as tensors; float64 becomes float32."""
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        return tensor.float() if tensor.dtype == torch.float64 else tensor
    if isinstance(value, Mapping):
        return {k: to_torch(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_torch(v) for v in value)
    return value


def as_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One loader batch as ``(args, kwargs)``: a dict is keyword arguments, a tuple positional."""
    inputs = to_torch(inputs)
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def call(model: nn.Module, inputs: Any) -> Any:
    args, kwargs = as_args(inputs)
    return model(*args, **kwargs)


def to_numpy(output: Any) -> np.ndarray:
    """The main output of a model as numpy: the tensor, ``.logits``, or the first element."""
    if torch.is_tensor(output):
        array: np.ndarray = output.detach().float().cpu().numpy()
        return array
    logits = getattr(output, "logits", None)
    if logits is not None:
        return to_numpy(logits)
    if isinstance(output, Mapping):
        return to_numpy(next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return to_numpy(output[0])
    return np.asarray(output)


def example_args(inputs: Any) -> tuple[Any, ...]:
    """Positional example inputs for tracing (keyword inputs become positional in order)."""
    args, kwargs = as_args(inputs)
    return args + tuple(kwargs.values())
