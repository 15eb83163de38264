"""Weight-only quantization for torch (INC 2.x's ``approach="weight_only"``): ``nn.Linear``
layers (and Hugging Face's GPT-2 ``Conv1D``) held as 2-8 bit group-wise integers from
inc-core's RTN/GPTQ/AWQ, computed by a fused kernel (``kernels``).

- ``linear.WeightOnlyLinear``: the layer;
- ``model``: which modules, their calibration inputs, the quantized copy of a model;
- ``kernels``: the packing and the matmul (inductor-compiled where a C++ compiler exists).
"""

from __future__ import annotations

from .linear import WeightOnlyLinear

__all__ = ["WeightOnlyLinear"]
