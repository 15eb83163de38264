"""``inc_tf.keras`` is reachable from ``import inc_tf`` (PEP 562) without ``import inc_tf``
importing TensorFlow or Keras."""

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


def test_import_inc_tf_imports_no_framework():
    code = "import sys, inc_tf; print(*[m in sys.modules for m in ('tensorflow', 'keras')])"
    assert run(code) == ["False", "False"]


def test_the_keras_callback_is_an_attribute_imported_on_first_use():
    code = (
        "import sys, inc_tf\n"
        "before = 'keras' in sys.modules\n"
        "cb = inc_tf.keras.QuantizationCallback\n"
        "from inc_tf.keras import QuantizationCallback\n"
        "import keras\n"
        "print(before, cb is QuantizationCallback, issubclass(cb, keras.callbacks.Callback),"
        " 'keras' in dir(inc_tf))"
    )
    assert run(code) == ["False", "True", "True", "True"]


def test_an_unknown_attribute_is_an_attribute_error():
    import inc_tf

    with pytest.raises(AttributeError, match="'inc_tf' has no attribute 'lightning'"):
        _ = inc_tf.lightning


def test_version_is_the_installed_distributions():
    import inc_tf

    assert inc_tf.__version__ == metadata.version("inc-tf")
