"""``QuantizationCallback`` for a Lightning ``Trainer``: QAT while you fit, int8 at the end.

Usage::

    cb = QuantizationCallback(QuantizationAwareTrainingConfig())
    lightning.Trainer(callbacks=[cb]).fit(module, loaders)
    cb.quantized.model   # the int8 module;  cb.save("out/")  ->  inc_core.load("out/", model=Module())
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inc_core.config import QuantizationAwareTrainingConfig
from inc_core.model import QuantizedModel

from ._imports import optional, require
from .inplace import InPlaceQat

_pl, _missing = optional("lightning.pytorch")
# without lightning the class still imports; constructing it says what to install
_Base: type = _pl.Callback if _pl is not None else object


class QuantizationCallback(_Base):
    """Fake quantization from ``setup("fit")`` (before Lightning configures the optimizers and
    wraps the module for DDP), int8 conversion of a copy at ``on_fit_end``.

    The fake-quantized module is what trains, validates and tests, and what checkpoints hold:
    a checkpoint reloads into a fresh module with this callback attached (``setup`` runs
    before Lightning restores the weights) and training resumes.
    """

    def __init__(self, conf: QuantizationAwareTrainingConfig | None = None) -> None:
        require(_missing, "inc_torch.lightning.QuantizationCallback", "lightning")
        super().__init__()
        self._qat = InPlaceQat(conf or QuantizationAwareTrainingConfig())
        self._global_zero = True

    @property
    def quantized(self) -> QuantizedModel | None:
        """The int8 result of the last ``fit`` (None before the first one ends)."""
        return self._qat.quantized

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._qat.prepare(pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        # the copy must not drag the Trainer (and its loaders) along
        self._qat.convert(pl_module, exclude={id(trainer): None})
        self._global_zero = bool(trainer.is_global_zero)

    def save(self, directory: str | Path) -> Path:
        """Write the int8 model (weights + plan, see ``inc_core.load``).

        Under DDP every process converts, and only global rank 0 writes: the others return
        the path without touching it, so ``cb.save(dir)`` can be called on every rank.
        """
        if not self._global_zero:
            return Path(directory)
        return self._qat.save(directory)
