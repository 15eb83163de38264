"""The registry loads ``inc_tf.backend`` on every ``fit``, whatever the model: loading it and
choosing a backend for another framework's model must not import TensorFlow or Keras (about
4 s); a Keras file is claimed by its suffix alone."""

from __future__ import annotations

from inc_tf import aliases
from inc_tf import layers as kl
from tests.fresh_interpreter import run


def test_choosing_a_backend_for_other_models_imports_no_tensorflow():
    found = run(
        """
        import json, sys
        import numpy as np
        from inc_core import backend
        from inc_core.errors import ModelError

        cls = backend.available()["tensorflow"]
        chosen = {}
        for name, model in [
            ("onnx path", "model.onnx"), ("torch file", "model.pt"),
            ("array", np.zeros(3)), ("object", object()),
        ]:
            try:
                chosen[name] = backend.for_model(model).name
            except ModelError as exc:
                chosen[name] = type(exc).__name__
        keras_file = cls.accepts("model.keras")
        print(json.dumps({
            "class": cls.__module__ + "." + cls.__name__,
            "aliases": dict(cls.op_type_aliases),
            "chosen": chosen,
            "keras file": keras_file,
            "frameworks": [m for m in ("tensorflow", "keras") if m in sys.modules],
        }))
        """
    )
    assert found["class"] == "inc_tf.backend.TfBackend"
    assert found["aliases"]["MatMul"] == ["Dense"]
    # only inc-tf is installed in this env: nothing takes these models
    assert set(found["chosen"].values()) == {"ModelError"}
    assert found["keras file"] is True
    assert found["frameworks"] == []


def test_a_keras_model_is_still_chosen_and_listed():
    found = run(
        """
        import json
        import keras
        from inc_core import backend

        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc")])
        chosen = backend.for_model(model)
        native = chosen.load_model(model, None)
        print(json.dumps({"chosen": chosen.name, "ops": [op.name for op in chosen.ops(native)]}))
        """
    )
    assert found == {"chosen": "tensorflow", "ops": ["fc"]}


def test_without_tensorflow_the_registry_skips_the_plugin_saying_so():
    found = run(
        """
        import json, sys
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        from inc_core import backend

        print(json.dumps({"available": sorted(backend.available()), "skipped": backend.skipped()}))
        """
    )
    assert "tensorflow" not in found["available"]
    assert found["skipped"]["tensorflow"].startswith("tensorflow is not installed")


def test_every_alias_names_a_layer_inc_quantizes():
    assert {t for types in aliases.ALIASES.values() for t in types} <= set(kl.QUANTIZABLE)
