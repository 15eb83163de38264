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
from typing import Any

from ..errors import ConfigError, not_allowed
from ..plugins import PluginGroup, describe
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


def _verify(cls: Any) -> None:
    """Check a strategy class against the contract; the message names the plugin and the problem."""
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(
            f"{describe(cls)} is not a subclass of inc_core.strategy.Strategy "
            f"(got {type(cls).__name__})"
        )
    where = f"strategy class {describe(cls)}"
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
    if cls.name in BUILTIN_NAMES and _plugins.registered.get(cls.name) is not cls:
        raise TypeError(f"strategy class {describe(cls)}: {cls.name!r} is an inc strategy's name")
    _plugins.registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _plugins.unregister(name)


def reset() -> None:
    """Forget what the entry points gave, so the next lookup scans them again (tests, and
    after installing a plugin at run time). Strategies registered by hand stay."""
    _plugins.reset()


#: inc's own strategies and the installed ones (entry points named like inc's are skipped)
_plugins: PluginGroup[type[Strategy]] = PluginGroup(
    ENTRY_POINT_GROUP, "strategy", _verify, log, {s.name: s for s in BUILTIN}
)


def available() -> dict[str, type[Strategy]]:
    """Every usable strategy by name: inc's own, then installed ones."""
    return _plugins.available()


def skipped() -> dict[str, str]:
    """Installed strategies whose plugin failed to load, with why."""
    return _plugins.skipped_reasons()


def get(name: str) -> type[Strategy]:
    """The strategy class called ``name``; a ``ConfigError`` naming the allowed ones otherwise."""
    if name in _plugins.registered:  # inc's own need no scan of the entry points
        return _plugins.registered[name]
    strategies = available()
    if name in strategies:
        return strategies[name]
    if name in _plugins.skipped:
        raise ConfigError(
            f"strategy={name!r} is installed but failed to load: {_plugins.skipped[name]}"
        )
    raise not_allowed("strategy", name, tuple(strategies))
