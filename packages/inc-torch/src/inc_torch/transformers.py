"""``QuantizationCallback`` for the Hugging Face ``Trainer``: QAT while it trains, int8 at the end.

Usage::

    cb = QuantizationCallback(QuantizationAwareTrainingConfig())
    trainer = transformers.Trainer(model, args, train_dataset=..., callbacks=[cb])
    trainer.train()
    cb.quantized.model   # the int8 model;  cb.save("out/")  ->  inc_core.load("out/", model=fp32)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inc_core.config import QuantizationAwareTrainingConfig
from inc_core.errors import IncError
from inc_core.model import QuantizedModel

from ._imports import optional, require
from .inplace import InPlaceQat

_tf, _missing = optional("transformers")
# without transformers the class still imports; constructing it says what to install
_Base: type = _tf.TrainerCallback if _tf is not None else object


class QuantizationCallback(_Base):
    """Fake quantization at ``on_init_end``, int8 conversion of a copy at ``on_train_end``.

    The Trainer creates its optimizer after ``on_init_end`` and before ``on_train_begin``; the
    swap happens in place and keeps the same Parameter objects, so it is also correct when the
    callback is added later (``trainer.add_callback``) and first sees the model at
    ``on_train_begin``.
    """

    def __init__(self, conf: QuantizationAwareTrainingConfig | None = None) -> None:
        require(_missing, "inc_torch.transformers.QuantizationCallback", "transformers")
        self._qat = InPlaceQat(conf or QuantizationAwareTrainingConfig())

    @property
    def quantized(self) -> QuantizedModel | None:
        return self._qat.quantized

    def on_init_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is not None:
            self._qat.prepare(model)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            raise IncError("the Trainer passed no model to on_train_begin")
        self._qat.prepare(model)

    def on_train_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is not None:
            self._qat.convert(model)

    def save(self, directory: str | Path) -> Path:
        """Write the int8 model (weights + plan; load with ``inc_core.load(dir, model=fp32)``)."""
        return self._qat.save(directory)
