"""inc backend for TensorFlow / Keras 3: int8 models run by the TFLite (LiteRT) interpreter.

``inc_core.quantization.fit(keras_model, PostTrainingQuantConfig(), calib_dataloader=...)``
picks this backend for a Keras model; ``inc_tf.keras.QuantizationCallback`` does
quantization-aware training inside ``model.fit``::

    import inc_tf
    model.fit(x, y, callbacks=[inc_tf.keras.QuantizationCallback(QuantizationAwareTrainingConfig())])

``import inc_tf`` imports neither TensorFlow nor Keras; ``inc_tf.keras`` imports them on first use.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them on first use
    from . import keras as keras

try:  # one source of truth: the version in packages/inc-tf/pyproject.toml
    __version__ = metadata.version("inc-tf")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# submodules reachable as attributes (PEP 562), imported when first touched: they import keras
_LAZY = ("keras",)


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
