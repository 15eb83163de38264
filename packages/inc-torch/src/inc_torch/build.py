"""Build an int8 model for a plan: the same steps for a fresh quantization and for a reload."""

from __future__ import annotations

import copy
from typing import Any

from torch import fx, nn

from inc_core.space import QuantPlan, TensorRanges

from . import dynamic, frozen, fusion, smooth_quant, static
from . import layout as channels_last
from .info import QuantInfo, attach
from .qconfig import Settings, quantized_engine


def has_static(plan: QuantPlan) -> bool:
    return any(op.approach == "static" for op in plan.ops.values())


def quantize(
    model: nn.Module,
    plan: QuantPlan,
    ranges: TensorRanges,
    *,
    example_inputs: tuple[Any, ...] | None = None,
    mode: str | None = None,
    smooth: dict[str, list[float]] | None = None,
    layout: dict[str, list[int]] | None = None,
) -> nn.Module:
    """A new int8 model; ``model`` is copied, never modified.

    ``ranges`` are the calibrated activation ranges (keys from ``static.prepare``'s
    observers); ``mode`` forces FX or eager (a reload repeats the original's mode);
    ``smooth`` are SmoothQuant scales to fold in first; ``layout`` the channels-last flattens
    of a saved model (None: found on ``example_inputs``).
    """
    settings = Settings.of(plan)
    work = copy.deepcopy(model).eval()
    if smooth:
        smooth_quant.scale_weights(work, smooth)
        if smooth_quant.hooked(smooth):
            mode = "eager"  # the input scaling is a hook, which FX would not see
    info = QuantInfo(plan=plan, mode="none", ranges=dict(ranges), smooth=dict(smooth or {}))
    info.example_inputs = example_inputs
    with quantized_engine(settings.qengine):
        if has_static(plan):
            prepared = static.prepare(work, plan, settings, example_inputs or (), mode=mode)
            static.seed(prepared, ranges)
            work = static.convert(prepared, settings)
            info.mode, info.fx_error = prepared.mode, prepared.fx_error
            info.layout = channels_last.lay_out(work, example_inputs, layout)
        dynamic.apply(work, plan, settings)
    if smooth:
        smooth_quant.install(work, smooth)
    if not isinstance(work, fx.GraphModule):
        info.tails = fusion.tails(model, list(plan.ops), settings.qengine)
    return attach(frozen.enable(work), info)
