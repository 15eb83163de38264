"""The registry loads ``inc_ort.backend`` on every ``fit``, whatever the model: loading it and
choosing a backend for another framework's model must not import onnx or onnxruntime (0.6 s);
an ONNX path is claimed by its suffix alone."""

from __future__ import annotations

from inc_ort import aliases, graph
from tests.fresh_interpreter import run

# ``import inc_ort.backend`` runs inc_ort/__init__.py first; this stands in a bare package for
# it, so the entry-point module's own imports are judged apart from the package's
BARE_PACKAGE = """
import importlib.util, sys, types
spec = importlib.util.find_spec("inc_ort")
package = types.ModuleType("inc_ort")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["inc_ort"] = package
"""

CHOOSE = """
import json, sys
import numpy as np
from inc_core import backend
from inc_core.errors import ModelError

cls = backend.available()["onnxrt"]
chosen = {}
for name, model in [
    ("keras path", "model.keras"), ("torch file", "model.pt"),
    ("array", np.zeros(3)), ("object", object()),
]:
    try:
        chosen[name] = backend.for_model(model).name
    except ModelError as exc:
        chosen[name] = type(exc).__name__
print(json.dumps({
    "class": cls.__module__ + "." + cls.__name__,
    "aliases": dict(cls.op_type_aliases),
    "chosen": chosen,
    "onnx path": cls.accepts("model.onnx"),
    "frameworks": [m for m in ("onnx", "onnxruntime") if m in sys.modules],
}))
"""


def check_no_framework(found: dict) -> None:
    assert found["class"] == "inc_ort.backend.OrtBackend"
    assert found["aliases"]["Linear"] == ["MatMul", "Gemm"]
    # only inc-ort is installed in this env: nothing takes these models
    assert set(found["chosen"].values()) == {"ModelError"}
    assert found["onnx path"] is True
    assert found["frameworks"] == []


def test_the_backend_module_imports_no_onnx():
    check_no_framework(run(BARE_PACKAGE + CHOOSE))


def test_choosing_a_backend_for_other_models_imports_no_onnx():
    check_no_framework(run(CHOOSE))


def test_an_onnx_model_is_still_chosen_and_listed(cnn_path):
    found = run(
        BARE_PACKAGE
        + f"""
import json
from inc_core import backend
from inc_core.config import PostTrainingQuantConfig

chosen = backend.for_model({str(cnn_path)!r})
native = chosen.load_model({str(cnn_path)!r}, PostTrainingQuantConfig())
print(json.dumps({{"chosen": chosen.name, "types": sorted({{op.type for op in chosen.ops(native)}})}}))
"""
    )
    assert found["chosen"] == "onnxrt"
    assert "Conv" in found["types"]


def test_without_onnxruntime_the_registry_skips_the_plugin_saying_so():
    found = run(
        """
        import json, sys
        sys.modules["onnxruntime"] = None  # as if onnxruntime were not installed
        from inc_core import backend

        print(json.dumps({"available": sorted(backend.available()), "skipped": backend.skipped()}))
        """
    )
    assert "onnxrt" not in found["available"]
    assert "requires 'onnxruntime'" in found["skipped"]["onnxrt"]
    assert "pip install onnxruntime" in found["skipped"]["onnxrt"]


def test_every_alias_names_an_op_type_inc_quantizes():
    types = {t for names in aliases.GENERIC_ALIASES.values() for t in names}
    assert types <= set(graph.STATIC_OPS)
