"""inc_torch imports without its extras; a callback without its extra says what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
sys.modules[{module!r}] = None  # as if the extra were not installed
import inc_torch.{name} as cb
from inc_core.errors import BackendNotAvailable
try:
    cb.QuantizationCallback()
except BackendNotAvailable as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("lightning", "lightning", "inc-torch[lightning]"),
        ("transformers", "transformers", "inc-torch[transformers]"),
    ],
)
def test_callback_without_its_extra_names_the_extra(name, module, extra):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(module=module, name=name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert f"pip install {extra}" in out


def test_import_inc_torch_loads_neither_extra():
    code = "import sys, inc_torch.backend; print('lightning' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]
