"""``QuantizationCallback`` for the Hugging Face ``Trainer``: QAT while it trains, int8 at the end.

Usage::

    cb = QuantizationCallback(QuantizationAwareTrainingConfig())
    trainer = transformers.Trainer(model, args, train_dataset=..., callbacks=[cb])
    trainer.train()
    cb.quantized.model   # the int8 model;  cb.save("out/")  ->  inc_core.load("out/", model=fp32)
    trainer.save_model("out/")  # transformers' files, and the int8 model in out/int8/
"""

from __future__ import annotations

import weakref
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

#: the folder ``save_pretrained`` (so ``trainer.save_model``) writes the int8 model into
INT8_DIR = "int8"


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
            _SaveWithInt8.remove(model)
            self._qat.prepare(model)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is None:
            raise IncError("the Trainer passed no model to on_train_begin")
        _SaveWithInt8.remove(model)  # training again: the int8 model is out of date
        self._qat.prepare(model)

    def on_train_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
    ) -> None:
        if model is not None:
            self._qat.convert(model)
            _SaveWithInt8.install(model, self._qat)

    def save(self, directory: str | Path) -> Path:
        """Write the int8 model (weights + plan; load with ``inc_core.load(dir, model=fp32)``)."""
        return self._qat.save(directory)


class _SaveWithInt8:
    """The trained model's ``save_pretrained`` once training has ended: transformers' own files
    (config and the trained weights under the fp32 model's names, so ``from_pretrained(dir)``
    gives the trained fp32 model without inc), then the int8 model in ``<dir>/int8``
    (``inc_core.load(dir / "int8", model=...from_pretrained(dir))``).

    ``Trainer.save_model`` calls the model's ``save_pretrained`` and tells callbacks nothing,
    so the int8 files come with it through an instance attribute; safetensors cannot hold
    torch's packed int8 weights, hence the separate folder.
    """

    def __init__(self, model: Any, qat: InPlaceQat) -> None:
        self._model = weakref.ref(model)
        self._qat = qat

    @classmethod
    def install(cls, model: Any, qat: InPlaceQat) -> None:
        object.__setattr__(model, "save_pretrained", cls(model, qat))

    @staticmethod
    def remove(model: Any) -> None:
        if isinstance(model.__dict__.get("save_pretrained"), _SaveWithInt8):
            del model.__dict__["save_pretrained"]

    def __call__(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        model = self._model()
        if model is None:
            raise IncError("the model this save_pretrained belonged to no longer exists")
        if kwargs.get("state_dict") is None:
            kwargs["state_dict"] = self._qat.trained_fp32_state(model)
        written = type(model).save_pretrained(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self._qat.save(Path(save_directory) / INT8_DIR)
        return written

    def __deepcopy__(self, memo: dict[int, Any]) -> _SaveWithInt8:
        # a copy of the model saves itself: point at the copy when the model is being copied
        model = self._model()
        return _SaveWithInt8(memo.get(id(model), model), self._qat)
