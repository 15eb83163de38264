"""A module, or a name in one, imported when first used rather than when named.

``inc_ort.backend`` is the entry point the registry loads on every ``fit``, whatever the
model's framework; importing onnx and onnxruntime there cost a Keras or PyTorch user 0.6 s.
The backend binds its helpers' names to ``Lazy`` stand-ins, so its hooks read as before
(``graph.optimize(...)``, ``to_feed(...)``) and the import happens at the first such use.
"""

from __future__ import annotations

import importlib
from typing import Any


class Lazy:
    """Stands for module ``module`` (or its attribute ``attr``): an attribute read or a call
    imports it and is passed on. Not for ``isinstance``'s second argument: use ``.Class``."""

    __slots__ = ("_attr", "_module", "_target")

    def __init__(self, module: str, attr: str | None = None) -> None:
        self._module = module
        self._attr = attr
        self._target: Any = None

    def _resolve(self) -> Any:
        if self._target is None:
            found = importlib.import_module(self._module)
            self._target = found if self._attr is None else getattr(found, self._attr)
        return self._target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._resolve(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        where = self._module if self._attr is None else f"{self._module}.{self._attr}"
        state = "imported" if self._target is not None else "not imported yet"
        return f"<lazy {where} ({state})>"
