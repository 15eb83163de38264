"""Per-op torch ``QConfig``s built from inc's plan, and the quantized engine per config backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import QConfig, QConfigMapping
from torch.ao.quantization.fake_quantize import FakeQuantize
from torch.ao.quantization.observer import (
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PlaceholderObserver,
)

from inc_core.space import OpQuant, QuantPlan

from ._cpu import default_reduce_range
from .observers import TORCH_DTYPES, IncActivationObserver, IncWeightObserver

#: config ``backend`` -> (torch quantized engine, scheme convention of inc_core.scheme)
ENGINES: dict[str, tuple[str, str]] = {"default": ("x86", "pytorch"), "ipex": ("onednn", "ipex")}


@dataclass(frozen=True)
class Settings:
    """What every op of one plan shares: engine, scheme convention, activation range."""

    qengine: str
    convention: str
    reduce_range: bool

    @classmethod
    def of(cls, plan: QuantPlan) -> Settings:
        qengine, convention = ENGINES[plan.backend]
        return cls(qengine, convention, default_reduce_range(plan.reduce_range))


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Run with ``torch.backends.quantized.engine = name``; packed weights are engine specific."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def static_qconfig(op: OpQuant, settings: Settings) -> QConfig:
    """Calibrated activation + weight observers that compute qparams with ``inc_core.scheme``."""
    assert op.activation is not None and op.weight is not None
    activation = IncActivationObserver.with_args(
        dtype=op.activation.dtype,
        sym=op.activation.scheme == "sym",
        algorithm=op.activation.algorithm,
        convention=settings.convention,
        reduce_range=settings.reduce_range,
    )
    return QConfig(activation=activation, weight=_weight(op, settings))


def _weight(op: OpQuant, settings: Settings) -> object:
    assert op.weight is not None
    return IncWeightObserver.with_args(
        dtype=op.weight.dtype,
        sym=op.weight.scheme == "sym",
        per_channel=op.weight.granularity == "per_channel",
        convention=settings.convention,
    )


def dynamic_qconfig(op: OpQuant, settings: Settings) -> QConfig:
    """Weights quantized offline with inc's math; activations by torch's kernel at run time."""
    activation = PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True)
    return QConfig(activation=activation, weight=_weight(op, settings))


def qat_qconfig(op: OpQuant, settings: Settings) -> QConfig:
    """Fake quantization for training, with torch's moving-average observers.

    During training the range must follow the weights and activations as they change, so
    the observers are torch's moving-average min/max; torch's FBGEMM formulas are the
    "pytorch" convention of ``inc_core.scheme`` (a test checks the converted scales agree).
    """
    assert op.activation is not None and op.weight is not None
    act_sym = op.activation.scheme == "sym"
    qmin, qmax = (0, 127) if settings.reduce_range else (0, 255)
    if op.activation.dtype == "int8":
        qmin, qmax = (-64, 63) if settings.reduce_range else (-128, 127)
    activation = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=qmin,
        quant_max=qmax,
        dtype=TORCH_DTYPES[op.activation.dtype],
        qscheme=torch.per_tensor_symmetric if act_sym else torch.per_tensor_affine,
    )
    per_channel = op.weight.granularity == "per_channel"
    weight_observer = (
        MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
    )
    weight = FakeQuantize.with_args(
        observer=weight_observer,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
        **({"ch_axis": 0} if per_channel else {}),
    )
    return QConfig(activation=activation, weight=weight)


#: ops that only move or select int8 values (FX shares their input's qparams): running them
#: on int8 saves a dequantize/quantize pair between two quantized ops, e.g. Conv -> MaxPool -> Linear.
#: (ReLU is not listed: FX fuses it into the Conv/Linear before it, and fusion requires the
#: fused types to share one qconfig.)
PASSTHROUGH: tuple[object, ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    torch.flatten,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    "flatten",
    "reshape",
    "view",
    "contiguous",
)


def static_mapping(
    plan: QuantPlan, settings: Settings, qat: bool = False, copies: Mapping[str, str] | None = None
) -> QConfigMapping:
    """Quantize the plan's static ops by module name, and let the passthrough ops between
    them run on int8; every other op stays float. ``copies`` (module name -> op name) are
    quantized as the op they copy."""
    mapping = QConfigMapping().set_global(None)  # type: ignore[arg-type]
    build = qat_qconfig if qat else static_qconfig
    first = None
    for name, op in plan.ops.items():
        if op.approach == "static":
            qconfig = build(op, settings)
            first = first or qconfig
            mapping.set_module_name(name, qconfig)
            for copied, original in (copies or {}).items():
                if original == name:
                    mapping.set_module_name(copied, qconfig)
    if first is not None:
        for kind in PASSTHROUGH:
            mapping.set_object_type(kind, first)
    for name, op in plan.ops.items():  # a float op stays float even if it is passthrough-typed
        if op.approach != "static":
            mapping.set_module_name(name, None)  # type: ignore[arg-type]
    return mapping
