from __future__ import annotations

import importlib
import pkgutil

import pytest

from inc_core import backend as registry

from . import kits
from .kit import Kit


def _installed_kits() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(kits.__path__)]
    return sorted(n for n in names if n in registry.available())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit_name" in metafunc.fixturenames:
        metafunc.parametrize("kit_name", _installed_kits(), scope="session")


_cache: dict[str, Kit] = {}


@pytest.fixture(scope="session")
def kit(kit_name: str) -> Kit:
    if kit_name not in _cache:
        module = importlib.import_module(f"{kits.__name__}.{kit_name}")
        _cache[kit_name] = module.make_kit()
    return _cache[kit_name]
