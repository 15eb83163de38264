"""Weight-only quantization math (INC 2.x's ``approach="weight_only"``), numpy only.

Pure functions over a weight ``w`` of shape ``(K, N)`` (ONNX ``MatMul``'s ``B``: ``y = x @ w``)
and statistics of its inputs; groups run along ``K`` (see ``groupwise``). Each algorithm
returns a ``QuantizedWeight`` that a plugin packs for its kernel (ORT ``MatMulNBits``, torch's
int4/int8 weight-packed matmuls):

- ``rtn``: round to nearest, optional clip search on the weight error;
- ``gptq``: row-by-row error compensation with the inputs' Hessian (``hessian``);
- ``awq``: per-input-channel scales from activation magnitudes, folded into the producer.

How ``fit`` runs ``approach="weight_only"`` and what a backend implements for it: ``plan``
(the contract), ``stats`` (calibration activations for GPTQ/AWQ), ``run`` (one op's weights
through its algorithm), ``summary`` (the report).
"""

from __future__ import annotations

from .awq import AwqResult, AwqScale, awq, search_clip, search_scale
from .gptq import HessianAccumulator, gptq, hessian
from .groupwise import QuantizedWeight, dequantize, fake_quantize, quantize
from .plan import (
    WeightOnlyScheme,
    build_space,
    calibrated_ops,
    op_choices,
    op_quant,
    recipe_args,
    scheme_of,
    schemes,
    weight_options,
)
from .rtn import rtn
from .run import WeightResult, quantize_weights
from .stats import InputStats, InputStatsCollector

__all__ = [
    "AwqResult",
    "AwqScale",
    "HessianAccumulator",
    "InputStats",
    "InputStatsCollector",
    "QuantizedWeight",
    "WeightOnlyScheme",
    "WeightResult",
    "awq",
    "build_space",
    "calibrated_ops",
    "dequantize",
    "fake_quantize",
    "gptq",
    "hessian",
    "op_choices",
    "op_quant",
    "quantize",
    "quantize_weights",
    "recipe_args",
    "rtn",
    "scheme_of",
    "schemes",
    "search_clip",
    "search_scale",
    "weight_options",
]
