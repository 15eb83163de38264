"""Save and load int8 torch models without pickling code.

Files written: ``weights.pt`` (the int8 ``state_dict``, read back with
``torch.load(weights_only=True)``), ``torch.json`` (plan, mode, ranges, SmoothQuant scales) and,
when the model can be traced, ``model.ts`` (a TorchScript archive: code-free, loadable without
the Python class). Loading with ``model=FreshFp32Model()`` rebuilds the int8 structure on that
model with the saved plan and loads the int8 state dict into it; without ``model=`` the
TorchScript archive is loaded.

Weight-only models (``approach="weight_only"``) keep their integers, scales and zero points as
plain uint8/float32 tensors in the same state dict (safetensors-compatible: no packed
objects); they load onto the fp32 model only (their kernel is compiled at run time, which
TorchScript cannot hold).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from inc_core.errors import ModelError

from . import _ops, build
from .info import QuantInfo, attach, info_of
from .qconfig import Settings, quantized_engine

log = logging.getLogger(__name__)

WEIGHTS = "weights.pt"
META = "torch.json"
SCRIPT = "model.ts"
WEIGHT_ONLY_SCRIPT = "weight-only layers run a kernel compiled at run time; none is written"


def save(model: nn.Module, directory: Path) -> list[str]:
    info = info_of(model)
    if info is None:
        raise ModelError(
            "this torch model was not produced by inc (no quantization info); "
            "save the QuantizedModel returned by quantization.fit"
        )
    torch.save(model.state_dict(), directory / WEIGHTS)
    meta = info.to_dict()
    files = [WEIGHTS, META]
    script_error = (
        WEIGHT_ONLY_SCRIPT
        if info.mode == "weight_only"
        else _save_script(model, info, directory / SCRIPT)
    )
    if script_error is None:
        files.append(SCRIPT)
    else:
        meta["torchscript_error"] = script_error
    (directory / META).write_text(json.dumps(meta, indent=2))
    return files


def _save_script(model: nn.Module, info: QuantInfo, path: Path) -> str | None:
    """Trace a TorchScript copy for loading without the model class; None when it worked."""
    if info.example_inputs is None:
        return "no example inputs were seen (give calib_dataloader or example_inputs)"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            with quantized_engine(Settings.of(info.plan).qengine):
                traced = torch.jit.trace(model.eval(), info.example_inputs, strict=False)
            torch.jit.save(traced, str(path))
    except Exception as exc:  # tracing is a convenience; the state dict path always works
        log.info("no TorchScript archive: %s", exc)
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def load(directory: Path, model: nn.Module | None = None, **_: Any) -> nn.Module:
    meta = json.loads((directory / META).read_text())
    info = QuantInfo.from_dict(meta)
    if model is None:
        if not (directory / SCRIPT).is_file():
            why = meta.get("torchscript_error", "not written")
            raise ModelError(
                f"{directory} has no TorchScript archive ({why}); load it onto the fp32 model: "
                f"inc_core.load({str(directory)!r}, model=YourFp32Model())"
            )
        with quantized_engine(Settings.of(info.plan).qengine):
            scripted = torch.jit.load(str(directory / SCRIPT))
        return attach(scripted, info)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model= must be the fp32 torch.nn.Module, got {type(model).__name__}")
    model = _ops.rooted(model)  # a bare Linear/Conv was quantized as the op of a Root
    _check_architecture(model, info)
    state = torch.load(directory / WEIGHTS, weights_only=True)
    rebuilt = rebuild(model, info)
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"the saved int8 weights do not fit {type(model).__name__}: pass the same fp32 "
            f"architecture that was quantized ({str(exc).splitlines()[0]})"
        ) from exc
    return rebuilt


def _check_architecture(model: nn.Module, info: QuantInfo) -> None:
    modules = dict(model.named_modules())
    for name, op_type in info.plan.op_types.items():
        found = modules.get(name)
        if found is None or type(found).__name__ != op_type:
            got = "no such module" if found is None else type(found).__name__
            raise ModelError(
                f"the saved model has {op_type} {name!r}, the model= given has {got}: pass the "
                f"same fp32 architecture that was quantized ({type(model).__name__} was given)"
            )


def rebuild(model: nn.Module, info: QuantInfo) -> nn.Module:
    """The int8 structure of ``info`` on a copy of ``model`` (weights still to be loaded)."""
    if info.mode == "weight_only":
        from inc_core.weight_only import schemes

        from .weight_only import model as weight_only

        return attach(weight_only.rebuild(model, schemes(info.plan)), info)
    if info.qat:
        from . import qat

        return qat.rebuild(model, info)
    mode = info.mode if info.mode in ("fx", "eager") else None
    return build.quantize(
        model, info.plan, info.ranges, mode=mode, smooth=info.smooth or None, layout=info.layout
    )
