"""The one strategy registry: inc's own strategies and those installed through entry points.

A distribution adds a strategy in the entry point group ``inc.strategies``::

    [project.entry-points."inc.strategies"]
    their_name = "their_package.module:TheirStrategy"

``TheirStrategy`` subclasses ``inc_core.strategy.Strategy`` with ``name = "their_name"``; it
is then usable as ``TuningCriterion(strategy="their_name")``. Loading is guarded as for
backends: a plugin that fails to import or breaks the contract is skipped with a warning that
says why, and naming it in a config is an error carrying that reason.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

from ..errors import ConfigError, not_allowed
from .auto import AutoStrategy
from .base import Strategy
from .basic import BasicStrategy
from .bayesian import BayesianStrategy
from .conservative import ConservativeStrategy
from .exhaustive import ExhaustiveStrategy
from .mse import MseStrategy
from .mse_v2 import MseV2Strategy, SensitivityStrategy
from .random import RandomStrategy

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "inc.strategies"

#: inc's own strategies, in the order the docs and error messages list them
BUILTIN: tuple[type[Strategy], ...] = (
    AutoStrategy,
    ConservativeStrategy,
    BasicStrategy,
    MseStrategy,
    MseV2Strategy,
    SensitivityStrategy,
    BayesianStrategy,
    ExhaustiveStrategy,
    RandomStrategy,
)
BUILTIN_NAMES: tuple[str, ...] = tuple(s.name for s in BUILTIN)

_registered: dict[str, type[Strategy]] = {s.name: s for s in BUILTIN}
_skipped: dict[str, str] = {}
_from_entry_points: set[str] = set()
_loaded_entry_points = False


def _describe(cls: Any) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def _verify(cls: Any) -> None:
    """Check a strategy class against the contract; the message names the plugin and the problem."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(
            f"{_describe(cls)} is not a subclass of inc_core.strategy.Strategy "
            f"(got {type(cls).__name__})"
        )
    where = f"strategy class {_describe(cls)}"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"{where} must set class attribute 'name' to a non-empty string, got {name!r}"
        )
    if not isinstance(cls.options, tuple) or not all(isinstance(o, str) for o in cls.options):
        raise TypeError(
            f"{where}: options must be a tuple of strategy_kwargs keys, got {cls.options!r}"
        )
    if not isinstance(cls.needs_probe, bool):
        raise TypeError(f"{where}: needs_probe must be a bool, got {cls.needs_probe!r}")
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise TypeError(f"{where} ({name!r}) does not implement: {', '.join(abstract)}")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Register a strategy class by hand (entry points do this for installed plugins)."""
    _verify(cls)
    if cls.name in BUILTIN_NAMES and _registered.get(cls.name) is not cls:
        raise TypeError(f"strategy class {_describe(cls)}: {cls.name!r} is an inc strategy's name")
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    if name not in BUILTIN_NAMES:
        _registered.pop(name, None)
        _from_entry_points.discard(name)


def reset() -> None:
    """Forget what the entry points gave, so the next lookup scans them again (tests, and
    after installing a plugin at run time). Strategies registered by hand stay."""
    global _loaded_entry_points
    for name in _from_entry_points:
        _registered.pop(name, None)
    _from_entry_points.clear()
    _skipped.clear()
    _loaded_entry_points = False


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registered:
            if ep.name in BUILTIN_NAMES:
                log.warning(
                    "skipping strategy %s (%s): an inc strategy has that name", ep.name, ep.value
                )
            continue
        try:
            cls = ep.load()
            _verify(cls)
            if cls.name != ep.name:
                raise TypeError(
                    f"entry point {ep.name!r} = {ep.value!r} loads a strategy named "
                    f"{cls.name!r}; the two names must be the same"
                )
        except Exception as exc:  # a broken plugin must not take the others down
            _skipped[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("skipping strategy %s: %s", ep.name, _skipped[ep.name])
            continue
        _registered[ep.name] = cls
        _from_entry_points.add(ep.name)


def available() -> dict[str, type[Strategy]]:
    """Every usable strategy by name: inc's own, then installed ones."""
    _load_entry_points()
    return dict(_registered)


def skipped() -> dict[str, str]:
    """Installed strategies whose plugin failed to load, with why."""
    _load_entry_points()
    return dict(_skipped)


def get(name: str) -> type[Strategy]:
    """The strategy class called ``name``; a ``ConfigError`` naming the allowed ones otherwise."""
    if name in _registered:  # inc's own need no scan of the entry points
        return _registered[name]
    strategies = available()
    if name in strategies:
        return strategies[name]
    if name in _skipped:
        raise ConfigError(f"strategy={name!r} is installed but failed to load: {_skipped[name]}")
    raise not_allowed("strategy", name, tuple(strategies))
