"""Entry-point plugin groups: what the backend registry (``inc.backends``) and the strategy
registry (``inc.strategies``) share.

A group holds the classes registered by hand or loaded from its entry points. Loading is
guarded: a plugin that fails to import or breaks the contract (``verify`` raises) is skipped
with a warning saying why, and the reason is kept for the error a config naming it gets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def describe(cls: Any) -> str:
    """``module.QualName`` of a plugin class (or the repr of whatever was loaded instead)."""
    module = getattr(cls, "__module__", "?")
    return f"{module}.{getattr(cls, '__qualname__', repr(cls))}"


def why(exc: BaseException) -> str:
    """A skipped plugin's reason, in one line."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"{exc.name} is not installed (ModuleNotFoundError: {exc})"
    return f"{type(exc).__name__}: {exc}"


class PluginGroup(Generic[T]):
    """The classes of one entry-point group, by name.

    ``kind`` names a class in messages ("backend", "strategy"); ``verify`` checks a class
    against the contract; ``builtin`` are inc's own classes, whose names an entry point cannot
    take; skipped plugins are warned about on ``log`` (the registry's own logger).
    """

    def __init__(
        self,
        group: str,
        kind: str,
        verify: Callable[[Any], None],
        log: logging.Logger,
        builtin: dict[str, T] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self.verify = verify
        self.log = log
        self.reserved: tuple[str, ...] = tuple(builtin or {})
        self.registered: dict[str, T] = dict(builtin or {})
        self.skipped: dict[str, str] = {}
        self.errors: dict[str, BaseException] = {}
        self._from_entry_points: set[str] = set()
        self._loaded = False

    def unregister(self, name: str) -> None:
        if name not in self.reserved:
            self.registered.pop(name, None)
            self._from_entry_points.discard(name)

    def reset(self) -> None:
        """Forget what the entry points gave, so the next lookup scans them again (tests, and
        after installing a plugin at run time). Classes registered by hand stay."""
        for name in self._from_entry_points:
            self.registered.pop(name, None)
        self._from_entry_points.clear()
        self.skipped.clear()
        self.errors.clear()
        self._loaded = False

    def load(self) -> None:
        """Load the group's entry points once; names already registered keep their class."""
        if self._loaded:
            return
        self._loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self.registered:
                if ep.name in self.reserved:
                    self.log.warning(
                        "skipping %s %s (%s): an inc %s has that name",
                        self.kind,
                        ep.name,
                        ep.value,
                        self.kind,
                    )
                continue
            try:
                cls = ep.load()
                self.verify(cls)
                if cls.name != ep.name:
                    raise TypeError(
                        f"entry point {ep.name!r} = {ep.value!r} loads a {self.kind} named "
                        f"{cls.name!r}; the two names must be the same"
                    )
            except Exception as exc:  # a broken plugin must not take the others down
                self.skipped[ep.name] = why(exc)
                self.errors[ep.name] = exc
                self.log.warning("skipping %s %s: %s", self.kind, ep.name, self.skipped[ep.name])
                continue
            self.registered[ep.name] = cls
            self._from_entry_points.add(ep.name)

    def available(self) -> dict[str, T]:
        self.load()
        return dict(self.registered)

    def skipped_reasons(self) -> dict[str, str]:
        self.load()
        return dict(self.skipped)
