"""The spec's generic op type names -> Keras layer classes, as plain data (no Keras).

``TfBackend.op_type_aliases`` is read from here: the registry loads the backend class for
every ``fit`` whatever the model's framework, and must not import TensorFlow to do it
(tests/tf/test_lazy_import.py checks every name is a layer ``layers`` quantizes).
"""

from __future__ import annotations

ALIASES: dict[str, tuple[str, ...]] = {
    "Conv": ("Conv1D", "Conv2D", "DepthwiseConv2D"),
    "Conv1D": ("Conv1D",),
    "Conv2D": ("Conv2D",),
    "DepthwiseConv2dNative": ("DepthwiseConv2D",),
    "MatMul": ("Dense",),
    "Linear": ("Dense",),
    "ConcatV2": ("Concatenate",),
    "AddV2": ("Add",),
}
