"""Weight-only quantization math (INC 2.x's ``approach="weight_only"``), numpy only.

Pure functions over a weight ``w`` of shape ``(K, N)`` (ONNX ``MatMul``'s ``B``: ``y = x @ w``)
and statistics of its inputs; groups run along ``K`` (see ``groupwise``). Each algorithm
returns a ``QuantizedWeight`` that a plugin packs for its kernel (ORT ``MatMulNBits``, torch's
int4/int8 weight-packed matmuls):

- ``rtn``: round to nearest, optional clip search on the weight error;
- ``gptq``: row-by-row error compensation with the inputs' Hessian (``hessian``);
- ``awq``: per-input-channel scales from activation magnitudes, folded into the producer.
"""

from __future__ import annotations

from .awq import AwqResult, AwqScale, awq, search_clip, search_scale
from .gptq import HessianAccumulator, gptq, hessian
from .groupwise import QuantizedWeight, dequantize, fake_quantize, quantize
from .plan import WeightOnlyScheme, op_choices
from .rtn import rtn

__all__ = [
    "AwqResult",
    "AwqScale",
    "HessianAccumulator",
    "QuantizedWeight",
    "WeightOnlyScheme",
    "awq",
    "dequantize",
    "fake_quantize",
    "gptq",
    "hessian",
    "op_choices",
    "quantize",
    "rtn",
    "search_clip",
    "search_scale",
]
