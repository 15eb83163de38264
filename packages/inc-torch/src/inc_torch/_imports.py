"""Optional dependencies, imported when a callback is constructed (not when inc_torch is)."""

from __future__ import annotations

import importlib
from types import ModuleType

from inc_core.errors import missing_dependency


def optional(module: str) -> tuple[ModuleType | None, ImportError | None]:
    """``(module, None)`` when importable, else ``(None, the ImportError)``."""
    try:
        return importlib.import_module(module), None
    except ImportError as exc:
        return None, exc


def require(error: ImportError | None, what: str, extra: str) -> None:
    """Raise the one missing-dependency error naming ``inc-torch[extra]`` if ``error``."""
    if error is not None:
        raise missing_dependency(what, f"inc-torch[{extra}]", error) from error
