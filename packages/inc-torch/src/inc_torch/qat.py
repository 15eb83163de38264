"""Quantization-aware training: insert fake quantization, train, convert to int8."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from torch.ao.quantization import convert as eager_convert
from torch.ao.quantization.quantize_fx import convert_fx

from inc_core.errors import IncError
from inc_core.space import QuantPlan

from . import frozen, static
from . import layout as channels_last
from .info import QuantInfo, attach, info_of
from .qconfig import Settings, quantized_engine


def prepare(
    model: nn.Module,
    plan: QuantPlan,
    example_inputs: tuple[Any, ...] | None = None,
    *,
    inplace: bool = False,
    mode: str | None = None,
) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with fake quantization on the plan's static ops.

    In place, modules are swapped inside ``model`` keeping the same Parameter objects (eager
    mode), so an optimizer created before still updates the trained weights.
    """
    settings = Settings.of(plan)
    work = model if inplace else copy.deepcopy(model)
    prepared = static.prepare(
        work, plan, settings, example_inputs or (), qat=True, mode="eager" if inplace else mode
    )
    info = QuantInfo(plan=plan, mode=prepared.mode, qat=True, fx_error=prepared.fx_error)
    info.example_inputs = example_inputs
    if not inplace:  # a trainer's module (Lightning, HF) is not traced to TorchScript
        _remember_first_inputs(prepared.model, info)
    return attach(prepared.model.train(), info)


def _remember_first_inputs(model: nn.Module, info: QuantInfo) -> None:
    """Keep the first positional batch seen in training: it traces the TorchScript copy."""

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if info.example_inputs is None and args:
            info.example_inputs = tuple(a.detach()[:1] if hasattr(a, "detach") else a for a in args)

    model.register_forward_pre_hook(hook)


def convert(
    model: nn.Module,
    plan: QuantPlan | None = None,
    *,
    inplace: bool = False,
    layout: dict[str, list[int]] | None = None,
) -> nn.Module:
    """The int8 model from a fake-quantized one (a converted copy unless ``inplace``);
    ``layout``: a saved model's channels-last flattens (None: found on the example inputs)."""
    info = info_of(model)
    if info is None or not info.qat:
        raise IncError(
            "convert_qat needs the model returned by prepare_qat (fake quantization inserted); "
            "call callbacks.on_train_begin() / prepare_qat first"
        )
    plan = plan or info.plan
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    with static.quiet(), quantized_engine(Settings.of(plan).qengine):
        converted = (
            convert_fx(work, backend_config=static.backend_config(Settings.of(plan)))  # type: ignore[arg-type]
            if info.mode == "fx"
            else eager_convert(work, inplace=True)
        )
        applied = channels_last.lay_out(converted, info.example_inputs, layout)
    result = QuantInfo(plan=plan, mode=info.mode, qat=True, fx_error=info.fx_error, layout=applied)
    result.example_inputs = info.example_inputs
    return attach(frozen.enable(converted), result)


def rebuild(model: nn.Module, info: QuantInfo) -> nn.Module:
    """The int8 structure of a QAT model on a fresh fp32 ``model`` (weights loaded after)."""
    prepared = prepare(model, info.plan, mode=info.mode if info.mode in static.MODES else None)
    return convert(prepared, info.plan, inplace=True, layout=info.layout)
