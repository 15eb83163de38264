"""What inc-tf takes as a model, and the error for everything from Keras/TensorFlow it does not.

The backend claims every Keras or TensorFlow object and every file a Keras user would hand it
(``.keras``, ``.h5``, ``.tflite``, SavedModel folders) so that a wrong one gets an error that
says what it is and what to pass instead, rather than "no backend accepts it, pip install
inc-tf" from the core while inc-tf is installed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from inc_core.errors import ModelError

#: file names a Keras user may give; only ``.keras`` (and legacy full-model ``.h5``) load
SUFFIXES = (".keras", ".h5", ".hdf5", ".tflite")
#: what to say a model must be
TAKES = (
    "inc-tf takes a built Sequential or functional keras.Model, or the path of its .keras file "
    "(model.save('model.keras'))"
)


def could_be_ours(model: Any) -> bool:
    """Whether ``model`` is a Keras/TensorFlow object or a Keras file (no framework import)."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        return path.suffix.lower() in SUFFIXES or (path / "saved_model.pb").is_file()
    modules = [cls.__module__ for cls in type(model).__mro__]
    return any(m.split(".")[0] in ("keras", "tensorflow", "tf_keras", "inc_tf") for m in modules)


def load(model: Any) -> Any:
    """The user's Keras model as a ``keras.Model``, or a ``ModelError`` naming what it is."""
    if isinstance(model, (str, Path)):
        return _from_path(Path(model))
    import keras

    from .runtime import TfLiteModel

    if isinstance(model, TfLiteModel):
        raise ModelError(
            "this is already an int8 TFLite model (a TfLiteModel from inc-tf); quantize the "
            f"fp32 Keras model it was made from. {TAKES}"
        )
    if isinstance(model, keras.layers.Layer) and not isinstance(model, keras.Model):
        raise ModelError(
            f"a keras {type(model).__name__} layer is not a model: wrap it, e.g. "
            "keras.Sequential([keras.Input(shape), layer]). " + TAKES
        )
    if not isinstance(model, keras.Model):
        legacy = (
            " Keras 2 (tf_keras) models are not Keras 3 models: save it as .h5 with tf_keras and "
            "pass that path, or rebuild it with keras 3."
            if type(model).__module__.startswith("tf_keras")
            else ""
        )
        raise ModelError(f"a {_kind(model)} is not a Keras model.{legacy} {TAKES}")
    return model


def _kind(model: Any) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _from_path(path: Path) -> Any:
    if (path / "saved_model.pb").is_file():
        raise ModelError(
            f"{path} is a SavedModel: Keras 3 loads it only as an opaque TFSMLayer, whose "
            "layers inc cannot calibrate or quantize. Pass the Keras model object or its "
            ".keras file (model.save('model.keras')) instead."
        )
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file. {TAKES}")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        raise ModelError(
            f"{path} is a TFLite model: TFLite models are already converted (and inc-tf's int8 "
            f"output is one); quantize the Keras model it came from. {TAKES}"
        )
    if path.name.lower().endswith((".weights.h5", ".weights.hdf5")):
        raise ModelError(
            f"{path} holds weights only (model.save_weights): build the model, call "
            "model.load_weights(path), then pass the model object"
        )
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .keras file (a .keras file is a zip archive). {TAKES}")
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ModelError(
            f"{path} could not be loaded by keras.saving.load_model ({type(exc).__name__}: "
            f"{first}); a custom layer must be registered with "
            f"keras.saving.register_keras_serializable. {TAKES}"
        ) from exc
