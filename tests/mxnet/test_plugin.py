"""The plugin as the registry sees it: entry point, class attributes, lazy import."""

from __future__ import annotations

import subprocess
import sys

from inc_core import backend as registry
from inc_mxnet.backend import MxnetBackend


def test_entry_point_registers_the_backend():
    backends = registry.available()
    assert backends["mxnet"] is MxnetBackend
    assert (MxnetBackend.framework, MxnetBackend.convention) == ("mxnet", "mxnet")
    assert MxnetBackend.config_backends == ("default",)


def test_loading_the_plugin_does_not_import_mxnet():
    code = (
        "import sys; from inc_core import backend; b = backend.available()['mxnet'];"
        "assert not b.accepts(object()); assert b.accepts('m-symbol.json');"
        "print('mxnet' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_gluon_blocks_and_symbol_files_are_accepted(digits_net, tmp_path):
    assert MxnetBackend.accepts(digits_net)
    assert MxnetBackend.accepts(tmp_path / "net-symbol.json")
    assert MxnetBackend.accepts((tmp_path / "net-symbol.json", tmp_path / "net-0000.params"))
    assert not MxnetBackend.accepts(tmp_path / "net.onnx")
    assert not MxnetBackend.accepts("net.params")
