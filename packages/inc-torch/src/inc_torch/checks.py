"""What a model must be before inc copies it: an fp32 ``nn.Module`` with real weights.

Each check names what was found and what to pass instead, before any copy or calibration
(without them a scripted, int8, float64 or meta-device model failed later as "no op that
pytorch can quantize" or as a kernel error blamed on the data).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from inc_core.errors import ModelError

#: where torch keeps its int8 module classes (eager, FX-converted and dynamic alike)
_QUANTIZED_PACKAGES = (
    "torch.ao.nn.quantized",
    "torch.ao.nn.intrinsic.quantized",
    "torch.nn.quantized",
    "torch.nn.intrinsic.quantized",
)


def check_model(model: nn.Module) -> None:
    """Raise ``ModelError`` when ``model`` is not an fp32 module inc can copy and quantize."""
    name = type(model).__name__
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelError(
            f"TorchScript models are not supported ({name}, made by torch.jit.script or "
            "torch.jit.trace); pass the nn.Module itself, before scripting or tracing"
        )
    meta = next((n for n, t in _tensors(model) if t.is_meta), None)
    if meta is not None:
        raise ModelError(
            f"{name}'s weights are on the meta device ({meta!r} has no values): load real "
            "weights first (model.to_empty(device='cpu') then load_state_dict, or "
            "from_pretrained without device_map='meta' / init_empty_weights)"
        )
    quantized = _quantized_part(model)
    if quantized is not None:
        raise ModelError(
            f"{name} is already quantized to int8 ({quantized}); pass the fp32 model it was "
            "made from"
        )
    other = next(
        (
            (n, t.dtype)
            for n, t in _tensors(model)
            if t.is_floating_point() and t.dtype != torch.float32
        ),
        None,
    )
    if other is not None:
        tensor, dtype = other
        raise ModelError(
            f"{name}'s weights are {dtype} ({tensor!r}); inc quantizes float32 models: pass "
            "a float32 copy, copy.deepcopy(model).float(), with float32 calibration data"
        )


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _quantized_part(model: nn.Module) -> str | None:
    """The first int8 module or tensor of ``model``, described; None when it has none."""
    for module_name, module in model.named_modules():
        cls = type(module)
        # the class's bases too: inc's own int8 modules subclass torch's
        if any(c.__module__.startswith(_QUANTIZED_PACKAGES) for c in cls.__mro__):
            where = repr(module_name) if module_name else "the model itself"
            return f"{where} is {cls.__module__}.{cls.__name__}"
    for tensor_name, tensor in _tensors(model):
        if tensor.is_quantized:
            return f"{tensor_name!r} is a {tensor.dtype} tensor"
    return None
