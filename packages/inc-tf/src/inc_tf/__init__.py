"""inc backend for TensorFlow / Keras 3: int8 models run by the TFLite (LiteRT) interpreter.

``inc_core.quantization.fit(keras_model, PostTrainingQuantConfig(), calib_dataloader=...)``
picks this backend for a Keras model; ``inc_tf.keras.QuantizationCallback`` does
quantization-aware training inside ``model.fit``.
"""

from __future__ import annotations

__version__ = "0.1.0"
