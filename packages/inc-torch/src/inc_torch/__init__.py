"""inc backend for PyTorch: post-training static/dynamic int8, QAT, SmoothQuant, and QAT
callbacks for Lightning (``inc_torch.lightning``) and the Hugging Face Trainer
(``inc_torch.transformers``). The core finds it through the ``inc.backends`` entry point
``pytorch``::

    import inc_torch
    lightning.Trainer(callbacks=[inc_torch.lightning.QuantizationCallback(conf)])
    transformers.Trainer(..., callbacks=[inc_torch.transformers.QuantizationCallback(conf)])

``import inc_torch`` imports neither torch, Lightning nor transformers; the two callback modules
are imported when first touched.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them on first use
    from . import lightning as lightning
    from . import transformers as transformers

try:  # one source of truth: the version in packages/inc-torch/pyproject.toml
    __version__ = metadata.version("inc-torch")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# submodules reachable as attributes (PEP 562), imported when first touched: each imports its
# framework (lightning, transformers), which `import inc_torch` must not
_LAZY = ("lightning", "transformers")


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
