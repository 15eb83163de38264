"""Dynamic quantization: int8 weights (inc's math), activations quantized by the kernel at run time."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic
from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

from inc_core.space import QuantPlan

from .qconfig import Settings, dynamic_qconfig, quantized_engine
from .static import quiet

#: rows x out_features from which oneDNN's dynamic int8 Linear is faster than FBGEMM's with
#: per-channel weights (measured on the CI CPU, AVX-512 VNNI: 1728 x 1536 outputs 23% faster,
#: 64 x 384 14% slower; the two give the same results up to float rounding; README)
ONEDNN_MIN_OUTPUTS = 1 << 16


class _OnednnPacking:
    """A second packing of a DynamicLinear's weights, for oneDNN; built on first use and
    again whenever the FBGEMM packing changes. Never copied or saved: it is derived."""

    def __init__(self) -> None:
        self.source: Any = None
        self.packed: Any = None

    def of(self, fbgemm_packed: Any, weight_bias: Any) -> Any:
        if self.source is not fbgemm_packed:
            with quantized_engine("onednn"):
                self.packed = torch.ops.quantized.linear_prepack(*weight_bias())
            self.source = fbgemm_packed
        return self.packed

    def __deepcopy__(self, memo: dict[int, Any]) -> _OnednnPacking:
        return _OnednnPacking()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


class DynamicLinear(nnqd.Linear):
    """torch's dynamic int8 Linear, honouring ``reduce_range``, and running large products
    on oneDNN.

    torch's own module always quantizes activations to 7 bits (``reduce_range=True``), which
    only CPUs without VNNI need; on VNNI CPUs the full 8 bits keep noticeably more accuracy
    (all-MiniLM-L6-v2 embeddings: mean cosine to fp32 0.971 -> see tests/torch/test_minilm.py).

    With per-channel weights FBGEMM's kernel is slower than oneDNN's on large products and
    faster on small ones (oneDNN has ~10 us more fixed cost per call): when ``onednn`` is set
    (x86 engine, 8-bit activations), calls with at least ``ONEDNN_MIN_OUTPUTS`` outputs run on
    a oneDNN packing of the same int8 weights.
    """

    _FLOAT_MODULE = nn.Linear
    reduce_range: bool = True
    onednn: _OnednnPacking | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:
            return super().forward(x)
        packed = self._packed_params._packed_params
        if self.onednn is not None and x.numel() // self.in_features * self.out_features >= (
            ONEDNN_MIN_OUTPUTS
        ):
            packed = self.onednn.of(packed, self._packed_params._weight_bias)
        y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range=self.reduce_range)
        return y.to(x.dtype)

    def _get_name(self) -> str:
        return "DynamicQuantizedLinear"


def apply(model: nn.Module, plan: QuantPlan, settings: Settings) -> nn.Module:
    """Swap the plan's dynamic ops in ``model`` (in place) for dynamic int8 modules."""
    spec = {
        name: dynamic_qconfig(op, settings)
        for name, op in plan.ops.items()
        if op.approach == "dynamic"
    }
    if not spec:
        return model
    mapping = {**get_default_dynamic_quant_module_mappings(), nn.Linear: DynamicLinear}
    with quiet():
        quantize_dynamic(model, qconfig_spec=spec, mapping=mapping, inplace=True)  # type: ignore[arg-type]
    onednn = (
        settings.qengine == "x86"
        and not settings.reduce_range
        and "onednn" in torch.backends.quantized.supported_engines
    )
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            module.reduce_range = settings.reduce_range
            module.onednn = _OnednnPacking() if onednn else None
    return model
