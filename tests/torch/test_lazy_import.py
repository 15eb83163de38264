"""The registry loads ``inc_torch.backend`` on every ``fit``, whatever the model: loading it and
choosing a backend for another framework's model must not import torch (about a second)."""

from __future__ import annotations

from inc_torch import _ops, aliases
from tests.fresh_interpreter import run


def test_choosing_a_backend_for_other_models_imports_no_torch():
    found = run(
        """
        import json, sys
        import numpy as np
        from inc_core import backend
        from inc_core.errors import ModelError

        loaded = backend.available()
        cls = loaded["pytorch"]
        chosen = {}
        for name, model in [
            ("onnx path", "model.onnx"), ("keras path", "model.keras"),
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
            "torch": "torch" in sys.modules,
        }))
        """
    )
    assert found["class"] == "inc_torch.backend.TorchBackend"
    assert found["aliases"]["Conv"] == ["Conv1d", "Conv2d", "Conv3d"]
    # only inc-torch is installed in this env: nothing takes these models
    assert set(found["chosen"].values()) == {"ModelError"}
    assert found["torch"] is False


def test_a_users_module_subclass_is_still_chosen_and_quantizable():
    found = run(
        """
        import json, sys
        import torch
        from inc_core import backend

        class Net(torch.nn.Module):  # defined in __main__: judged by its bases' modules
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 2)

            def forward(self, x):
                return self.fc(x)

        chosen = backend.for_model(Net())
        native = chosen.load_model(Net(), None)
        print(json.dumps({"chosen": chosen.name, "ops": [op.name for op in chosen.ops(native)]}))
        """
    )
    assert found == {"chosen": "pytorch", "ops": ["fc"]}


def test_without_torch_the_registry_skips_the_plugin_saying_so():
    found = run(
        """
        import json, sys
        sys.modules["torch"] = None  # as if torch were not installed
        from inc_core import backend

        print(json.dumps({"available": sorted(backend.available()), "skipped": backend.skipped()}))
        """
    )
    assert "pytorch" not in found["available"]
    assert found["skipped"]["pytorch"].startswith("torch is not installed")


def test_every_alias_names_a_module_type_inc_quantizes():
    names = {t.__name__ for t in _ops.QUANTIZABLE}
    assert {t for types in aliases.OP_TYPE_ALIASES.values() for t in types} <= names
