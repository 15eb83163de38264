"""The spec's generic op type names (and ONNX/TF spellings) -> torch module type names.

Plain data, no torch: ``TorchBackend.op_type_aliases`` is read from here, and the registry
loads the backend class for every ``fit`` whatever the model's framework
(tests/torch/test_lazy_import.py checks every name is a module type ``_ops`` quantizes).
"""

from __future__ import annotations

from collections.abc import Mapping

OP_TYPE_ALIASES: Mapping[str, tuple[str, ...]] = {
    "Conv": ("Conv1d", "Conv2d", "Conv3d"),
    "Conv1D": ("Conv1d",),
    "Conv2D": ("Conv2d",),
    "Conv3D": ("Conv3d",),
    "MatMul": ("Linear",),
    "Gemm": ("Linear",),
    "Dense": ("Linear",),
    "RNN": ("LSTM", "GRU", "LSTMCell", "GRUCell", "RNNCell"),
}
