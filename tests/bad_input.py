"""The bad-input catalogue's shared parts (tests/<pkg>/test_errors.py): a case is a model, a
config and calibration data that ``fit`` must refuse with an inc error naming what was wrong,
leaving the user's model and files as they were and nothing behind in the ``sandbox``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inc_core import PostTrainingQuantConfig, quantization
from inc_core.errors import IncError


def listing(root: Path) -> list[str]:
    """Every path below ``root``, relative to it, but Python's own bytecode caches (a test's
    fake plugin module imported from the sandbox writes one)."""
    paths = (p.relative_to(root) for p in root.rglob("*"))
    return sorted(str(p) for p in paths if "__pycache__" not in p.parts)


def conf(**kwargs: Any) -> Callable[[], PostTrainingQuantConfig]:
    """A static, unguarded config with ``kwargs``, built when the case runs (a bad value must
    fail inside the test, not while the module's table is built)."""
    return lambda: PostTrainingQuantConfig(**{"approach": "static", "guards": False, **kwargs})


@dataclass(frozen=True)
class Case:
    """One bad input: ``model`` gets the sandbox's work directory (for cases that write files)."""

    id: str
    model: Callable[[Path], Any]
    conf: Callable[[], Any]
    data: Callable[[], Any]
    error: type[BaseException]
    parts: tuple[str, ...]


def assert_refused(case: Case, sandbox: Path, fingerprint: Callable[[Any], str]) -> None:
    """``fit`` raises ``case.error`` (an inc error) whose message holds every ``case.parts``;
    ``fingerprint(model)`` and the sandbox's listing are unchanged."""
    model = case.model(sandbox / "work")
    config, data = case.conf(), case.data()
    before, files = fingerprint(model), listing(sandbox)
    with pytest.raises(case.error) as exc:
        quantization.fit(model, config, calib_dataloader=data)
    message = str(exc.value)
    for part in case.parts:
        assert part in message, f"{part!r} missing from: {message}"
    assert isinstance(exc.value, IncError)
    assert fingerprint(model) == before
    assert listing(sandbox) == files
