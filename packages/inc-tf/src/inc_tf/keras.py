"""``QuantizationCallback``: quantization-aware training inside ``model.fit``.

    cb = inc_tf.keras.QuantizationCallback(QuantizationAwareTrainingConfig())
    model.fit(x, y, epochs=3, callbacks=[cb])
    cb.save("out/")          # the int8 TFLite model + inc.json; cb.quantized is the QuantizedModel

On ``on_train_begin`` the callback patches fake quantization into the quantized layers of the
model being trained (see ``inc_tf.qat``) and makes Keras retrace its step functions; the model
trains through it. On ``on_train_end`` it converts the trained weights and learned ranges to the
same int8 artifact as post-training quantization and restores the layers, so after ``fit`` the
model is an ordinary fp32 Keras model holding the quantization-aware weights. A second ``fit``
with the same callback continues from the learned ranges.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras

from inc_core.config import QuantizationAwareTrainingConfig
from inc_core.errors import ConfigError, IncError
from inc_core.model import QuantizedModel
from inc_core.quantization import prepare_session
from inc_core.space import OpQuant, QuantPlan

from . import layers as kl
from . import qat
from .backend import TfBackend, effective_plan
from .points import patch, points, tensors, unpatch


class QuantizationCallback(keras.callbacks.Callback):
    """Fake-quantize while ``fit`` trains; an int8 model when it ends (``.quantized``, ``.save``)."""

    def __init__(self, conf: QuantizationAwareTrainingConfig | None = None) -> None:
        super().__init__()
        conf = QuantizationAwareTrainingConfig() if conf is None else conf
        if not isinstance(conf, QuantizationAwareTrainingConfig):
            raise ConfigError(
                f"QuantizationCallback takes a QuantizationAwareTrainingConfig, got "
                f"{type(conf).__name__}; for post-training quantization call "
                "inc_core.quantization.fit(model, PostTrainingQuantConfig(), calib_dataloader=...)"
            )
        self.conf = conf
        self.quantized: QuantizedModel | None = None
        self._backend: TfBackend | None = None
        self._plan: Any = None
        self._points: Any = None
        self._quantizer: qat.TrainingQuantizer | None = None
        self._patched: list[Any] = []
        self._seconds = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if self._plan is None:
            session = prepare_session(model, self.conf)
            if not isinstance(session.backend, TfBackend):
                raise ConfigError(
                    f"inc_tf.keras.QuantizationCallback needs a Keras model; the {session.backend.name!r} backend took it"
                )
            self._backend = session.backend
            self._plan = _trained_in_place(model, session.default_plan)
            self._points = points(model, effective_plan(model, self._plan))
            self._quantizer = qat.TrainingQuantizer(tensors(model, self._points))
        if self._quantizer is None:  # set with the plan above, on the first fit
            raise RuntimeError(
                "QuantizationCallback has a plan but no quantizer: on_train_begin was interrupted"
            )
        self._started = time.perf_counter()
        self._patched = patch(model, self._points, self._quantizer)
        qat.reset_compiled_functions(model)
        model.make_train_function(force=True)  # fit already holds no traced step: retrace now

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        unpatch(self._patched)
        self._patched = []
        qat.reset_compiled_functions(model)
        assert self._backend is not None and self._quantizer is not None
        native = self._backend.quantize_trained(model, self._plan, self._quantizer.ranges())
        self._seconds += time.perf_counter() - self._started
        self.quantized = QuantizedModel(
            model=native,
            backend=self._backend.name,
            plan=self._plan,
            config=self.conf.to_dict(),
            report={"qat_seconds": self._seconds},
        )

    def save(self, directory: str | Path) -> Path:
        """Write the int8 model of the last ``fit`` (model.tflite, io.json, inc.json)."""
        if self.quantized is None:
            raise IncError(
                "nothing to save yet: train with model.fit(..., callbacks=[this callback]) first"
            )
        return self.quantized.save(directory)


def _trained_in_place(model: keras.Model, plan: QuantPlan) -> QuantPlan:
    """``plan`` with the ops that the model being trained does not have as layers in fp32.

    The session plans a private copy, in which a SeparableConv2D is split into its depthwise
    and pointwise convs (``separable``); the callback patches the user's own layers, where it
    stays one layer that trains in float, and the plan (op_report, inc.json) says so."""
    layers = {layer.name for layer in kl.quantizable(model)}
    floats = {
        name: OpQuant.float()
        for name, op in plan.ops.items()
        if op.quantized and name not in layers
    }
    return plan.with_ops(floats) if floats else plan
