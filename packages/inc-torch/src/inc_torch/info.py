"""What a quantized torch model remembers about how it was built (saved next to its weights)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from inc_core.space import QuantPlan, TensorRange, TensorRanges

ATTRIBUTE = "inc_torch_info"


@dataclass
class QuantInfo:
    plan: QuantPlan
    #: "fx" or "eager" for static ops, "none" when only dynamic ops (or nothing) are quantized
    mode: str
    ranges: TensorRanges = field(default_factory=dict)
    #: SmoothQuant per-channel scales by Linear name (applied before quantization)
    smooth: dict[str, list[float]] = field(default_factory=dict)
    #: whether the static ops were trained with fake quantization (QAT) rather than calibrated
    qat: bool = False
    #: why FX could not be used, when mode is "eager"
    fx_error: str = ""
    #: flatten node -> (C, H, W) it flattens channels-last (``layout``); None: not decided yet
    layout: dict[str, list[int]] | None = None
    #: one batch of real inputs, used to trace a TorchScript copy at save time (not saved)
    example_inputs: tuple[Any, ...] | None = None
    #: non-FX models: op -> the BatchNorm/ReLU steps FX would fuse after it (``fusion.tails``),
    #: so per-op outputs match the fp32 model's fused ones (derived, not saved)
    tails: dict[str, list[str] | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "mode": self.mode,
            "ranges": {k: [r.min.tolist(), r.max.tolist()] for k, r in self.ranges.items()},
            "smooth": self.smooth,
            "qat": self.qat,
            "fx_error": self.fx_error,
            "layout": self.layout or {},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantInfo:
        return cls(
            plan=QuantPlan.from_dict(data["plan"]),
            mode=data["mode"],
            ranges={k: TensorRange.of(lo, hi) for k, (lo, hi) in data.get("ranges", {}).items()},
            smooth=data.get("smooth", {}),
            qat=data.get("qat", False),
            fx_error=data.get("fx_error", ""),
            layout=data.get("layout", {}),
        )


def attach(model: nn.Module, info: QuantInfo) -> nn.Module:
    # a plain attribute (not a submodule or buffer): travels with deepcopy, not with state_dict
    object.__setattr__(model, ATTRIBUTE, info)
    return model


def info_of(model: nn.Module) -> QuantInfo | None:
    return getattr(model, ATTRIBUTE, None)
