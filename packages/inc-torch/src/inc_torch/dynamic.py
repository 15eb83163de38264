"""Dynamic quantization: int8 weights (inc's math), activations quantized by the kernel at run time."""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantize_dynamic
from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

from inc_core.space import QuantPlan

from .qconfig import Settings, dynamic_qconfig
from .static import quiet


class DynamicLinear(nnqd.Linear):
    """torch's dynamic int8 Linear, honouring ``reduce_range``.

    torch's own module always quantizes activations to 7 bits (``reduce_range=True``), which
    only CPUs without VNNI need; on VNNI CPUs the full 8 bits keep noticeably more accuracy
    (all-MiniLM-L6-v2 embeddings: mean cosine to fp32 0.971 -> see tests/torch/test_minilm.py).
    """

    _FLOAT_MODULE = nn.Linear
    reduce_range: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:
            return super().forward(x)
        y = torch.ops.quantized.linear_dynamic(
            x, self._packed_params._packed_params, reduce_range=self.reduce_range
        )
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
    for module in model.modules():
        if isinstance(module, DynamicLinear):
            module.reduce_range = settings.reduce_range
    return model
