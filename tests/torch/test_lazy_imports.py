"""``inc_torch.lightning`` / ``inc_torch.transformers`` are reachable from ``import inc_torch``
(PEP 562) without ``import inc_torch`` importing torch, Lightning or transformers."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest


def run(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return out.stdout.split()


def test_import_inc_torch_imports_no_framework():
    code = (
        "import sys, inc_torch; "
        "print(*[m in sys.modules for m in ('torch', 'lightning', 'transformers')])"
    )
    assert run(code) == ["False", "False", "False"]


@pytest.mark.parametrize(
    ("name", "base"),
    [("lightning", "lightning.pytorch.Callback"), ("transformers", "transformers.TrainerCallback")],
)
def test_the_callback_modules_are_attributes_imported_on_first_use(name, base):
    module, cls = base.rsplit(".", 1)
    code = (
        "import sys, importlib, inc_torch\n"
        f"before = {name!r} in sys.modules\n"
        f"cb = inc_torch.{name}.QuantizationCallback\n"
        f"from inc_torch.{name} import QuantizationCallback\n"
        f"base = getattr(importlib.import_module({module!r}), {cls!r})\n"
        f"print(before, cb is QuantizationCallback, issubclass(cb, base), {name!r} in dir(inc_torch))"
    )
    assert run(code) == ["False", "True", "True", "True"]


def test_an_unknown_attribute_is_an_attribute_error():
    import inc_torch

    with pytest.raises(AttributeError, match="'inc_torch' has no attribute 'keras'"):
        _ = inc_torch.keras


def test_version_is_the_installed_distributions():
    import inc_torch

    assert inc_torch.__version__ == metadata.version("inc-torch")
