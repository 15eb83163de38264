"""Quantization-aware training: fake quantization (keras.ops, straight-through) patched into the
quantized layers of a Keras model, with moving-average activation ranges.

Keras callbacks cannot swap the model that ``fit`` trains, so fake quantization is inserted by
replacing ``call`` on each quantized layer instance (``points.patch``) rather than by wrapping
layers (tfmot's way, which builds a new model). The layers, their weights and the model's
saved config stay exactly the user's; only the forward pass changes while patched. Range state
lives outside the layers, so checkpoints and ``get_weights()`` keep the fp32 model's layout.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np
from keras import ops

from inc_core.space import TensorRange

from . import fakequant as fq
from .points import Point

#: moving-average decay of activation ranges (tfmot uses 0.999 over long fine-tuning runs;
#: 0.99 follows a short fine-tune closely enough)
EMA_DECAY = 0.99


def _training() -> bool:
    """Whether the enclosing Keras call runs in training mode (updates ranges) or inference."""
    try:
        from keras.src.backend.common import global_state

        context = global_state.get_global_attribute("current_call_ctx")
    except ImportError:  # pragma: no cover - Keras moved its internals
        return True
    return bool(context is not None and context.training)


class TrainingQuantizer:
    """Per tensor: moving-average min/max updated in training steps, frozen in inference."""

    def __init__(self, keys: Iterable[str], decay: float = EMA_DECAY) -> None:
        self.decay = decay
        self.states: dict[str, tuple[Any, Any, Any]] = {}
        for key in keys:
            safe = key.replace("/", "_")
            self.states[key] = (
                keras.Variable(0.0, trainable=False, name=f"inc_{safe}_min"),
                keras.Variable(0.0, trainable=False, name=f"inc_{safe}_max"),
                keras.Variable(0.0, trainable=False, name=f"inc_{safe}_seen"),
            )

    def activation(self, key: str, x: Any, dtype: str, owner: bool) -> Any:
        lo, hi, seen = self.states[key]
        rmin, rmax = lo.value, hi.value
        if owner and _training():
            bmin = ops.stop_gradient(ops.cast(ops.min(x), "float32"))
            bmax = ops.stop_gradient(ops.cast(ops.max(x), "float32"))
            started = seen.value > 0
            rmin = ops.where(started, rmin * self.decay + bmin * (1 - self.decay), bmin)
            rmax = ops.where(started, rmax * self.decay + bmax * (1 - self.decay), bmax)
            lo.assign(rmin)
            hi.assign(rmax)
            seen.assign(1.0)
            scale, qmin, qmax = fq.ste_scale(rmin, rmax, dtype)
            return fq.ste(x, ops.cast(scale, x.dtype), qmin, qmax)
        scale, qmin, qmax = fq.ste_scale(rmin, rmax, dtype)
        # before any training step there is no range yet: pass values through
        return ops.where(seen.value > 0, fq.ste(x, ops.cast(scale, x.dtype), qmin, qmax), x)

    def kernel(self, layer: Any, point: Point) -> Any:
        assert point.weight is not None
        return fq.ste_kernel(
            layer.kernel, point.weight.dtype, point.weight.granularity, point.depthwise
        )

    def ranges(self) -> dict[str, TensorRange]:
        """The learned ranges; tensors no training step has seen are left out."""
        result = {}
        for key, (lo, hi, seen) in self.states.items():
            if float(np.asarray(seen.numpy())) > 0:
                result[key] = TensorRange.of(float(lo.numpy()), float(hi.numpy()))
        return result


#: quantizers of models prepared by ``prepare_qat`` (kept off the model: Keras would track them)
_QUANTIZERS: weakref.WeakKeyDictionary[Any, TrainingQuantizer] = weakref.WeakKeyDictionary()


def remember(model: Any, quantizer: TrainingQuantizer) -> None:
    _QUANTIZERS[model] = quantizer


def quantizer_of(model: Any) -> TrainingQuantizer | None:
    return _QUANTIZERS.get(model)


def reset_compiled_functions(model: keras.Model) -> None:
    """Drop Keras' traced train/test/predict functions so the next call traces the current
    forward pass (fake-quantized or not)."""
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
