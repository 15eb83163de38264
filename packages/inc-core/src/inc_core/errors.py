"""Exceptions shared by the core and every plugin, and the one wording for a missing dependency."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class IncError(Exception):
    """Base class of every error inc raises on purpose."""


class ConfigError(IncError, ValueError):
    """A configuration key or value is wrong; the message names it and lists what is allowed."""


class DataError(IncError, ValueError):
    """Calibration or evaluation data that cannot be used (empty, NaN, wrong names or shapes)."""


class ModelError(IncError, ValueError):
    """A model that no backend can load or quantize as asked."""


class BackendNotAvailable(IncError, ImportError):
    """A backend, framework or execution provider the user asked for is not installed here."""


class DeviceNotAvailable(IncError, RuntimeError):
    """The device named in the config is not present on this machine."""


class GuardWarning(UserWarning):
    """A default guard of ``fit`` changed or could not fix the int8 model (see ``report``).

    Silence it with ``warnings.filterwarnings("ignore", category=GuardWarning)``, or turn the
    guards off with ``PostTrainingQuantConfig(guards=False)``.
    """


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed value nearest to ``value`` by spelling, or None when nothing is close."""
    by_lower = {str(a).lower(): str(a) for a in allowed}
    matches = difflib.get_close_matches(str(value).lower(), list(by_lower), n=1, cutoff=0.5)
    return by_lower[matches[0]] if matches else None


def not_allowed(key: str, value: object, allowed: Iterable[object]) -> ConfigError:
    """``ConfigError`` for ``key=value`` naming the allowed values and the closest spelling."""
    allowed = list(allowed)
    hint = closest(str(value), [str(a) for a in allowed])
    suggestion = f"; did you mean {hint!r}?" if hint is not None else ""
    listed = ", ".join(repr(a) for a in allowed)
    return ConfigError(f"{key}={value!r} is not allowed; allowed: {listed}{suggestion}")


def missing_dependency(
    what: str, package: str, exc: BaseException | None = None, *, extra: str = ""
) -> BackendNotAvailable:
    """The single wording for 'X needs package Y': what, the pip command, and the cause.

    Raise the result ``from exc`` so the original ImportError stays in the traceback.
    """
    found = f" (import failed: {exc})" if exc is not None else ""
    hint = f" {extra}" if extra else ""
    return BackendNotAvailable(
        f"{what} requires {package!r}{found}. Install it with: pip install {package}{hint}"
    )
