"""The backend registry: entry points loaded lazily, broken plugins isolated, helpful errors.

Plugins here are real distributions: a ``*.dist-info`` with ``entry_points.txt`` and ``METADATA``
written into a temporary directory on ``sys.path``, found by ``importlib.metadata`` as pip's
would be.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import logging
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inc_core
from inc_core import (
    PostTrainingQuantConfig,
    QuantizationAwareTrainingConfig,
    first_party,
    quantization,
)
from inc_core import backend as registry
from inc_core.backend import Backend
from inc_core.errors import BackendNotAvailable, ConfigError, ModelError
from inc_core.metric import METRICS

from .reference_backend import ReferenceBackend

GOOD = """
from tests.core.reference_backend import NumpyMLP, ReferenceBackend


class TaggedMLP(NumpyMLP):
    pass


class GoodBackend(ReferenceBackend):
    name = "tmpgood"
    package = "inc-tmp-good"
    priority = 5

    @classmethod
    def accepts(cls, model):
        return isinstance(model, TaggedMLP)
"""

BROKEN_IMPORT = """
import inc_tmp_framework_that_is_not_installed  # like `import torch` without torch
"""

NO_PACKAGE = """
from tests.core.reference_backend import ReferenceBackend


class NoPackageBackend(ReferenceBackend):
    name = "tmpnopackage"
    package = None
"""

ABSTRACT = """
from inc_core.backend import Backend


class HalfBackend(Backend):
    name = "tmphalf"
    package = "inc-tmp-half"
    framework = "numpy"
    convention = "onnxrt"

    @classmethod
    def accepts(cls, model):
        return False
"""

WRONG_NAME = """
from tests.core.reference_backend import ReferenceBackend


class RenamedBackend(ReferenceBackend):
    name = "somethingelse"
"""

PLUGINS = {
    "tmpgood": ("inc_tmp_good", GOOD, "GoodBackend"),
    "tmpbroken": ("inc_tmp_broken", BROKEN_IMPORT, "BrokenBackend"),
    "tmpnopackage": ("inc_tmp_nopackage", NO_PACKAGE, "NoPackageBackend"),
    "tmphalf": ("inc_tmp_half", ABSTRACT, "HalfBackend"),
    "tmpwrongname": ("inc_tmp_wrongname", WRONG_NAME, "RenamedBackend"),
}


def write_distribution(root: Path, ep_name: str, module: str, source: str, attr: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = root / f"{module}-0.0.1.dist-info"
    dist.mkdir()
    dist_name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.0.1\n")
    (dist / "entry_points.txt").write_text(f"[inc.backends]\n{ep_name} = {module}:{attr}\n")


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install the PLUGINS distributions into a directory on sys.path; reset the registry."""
    for ep_name, (module, source, attr) in PLUGINS.items():
        write_distribution(tmp_path, ep_name, module, source, attr)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry.reset()
    yield tmp_path
    monkeypatch.undo()
    importlib.invalidate_caches()
    for module, _, _ in PLUGINS.values():
        sys.modules.pop(module, None)
    registry.reset()


def test_entry_points_are_loaded_lazily(plugins):
    assert "inc_tmp_good" not in sys.modules
    PostTrainingQuantConfig(approach="static")  # configuring does not scan plugins
    assert "inc_tmp_good" not in sys.modules
    assert "tmpgood" in registry.available()
    assert "inc_tmp_good" in sys.modules


def test_a_broken_plugin_is_skipped_with_the_reason_and_others_still_work(plugins, caplog, mlp):
    with caplog.at_level(logging.WARNING, logger="inc_core.backend"):
        available = registry.available()
    assert "tmpgood" in available and "reference" in available
    for broken in ("tmpbroken", "tmpnopackage", "tmphalf", "tmpwrongname"):
        assert broken not in available
        assert f"skipping backend {broken}: " in caplog.text
    skipped = registry.skipped()
    assert skipped["tmpbroken"].startswith(
        "inc_tmp_framework_that_is_not_installed is not installed (ModuleNotFoundError"
    )
    assert "NoPackageBackend" in skipped["tmpnopackage"] and "'package'" in skipped["tmpnopackage"]
    assert "HalfBackend" in skipped["tmphalf"]
    for method in ("calibrate", "capability", "load", "ops", "quantize", "save"):
        assert method in skipped["tmphalf"]
    assert "'somethingelse'" in skipped["tmpwrongname"]

    model = sys.modules["inc_tmp_good"].TaggedMLP(mlp.layers)
    q = quantization.fit(model, PostTrainingQuantConfig(approach="dynamic"))
    assert q.backend == "tmpgood"
    assert registry.for_model(mlp).name == "reference"


def test_naming_a_plugin_that_failed_to_load_is_an_error_not_a_skip(plugins):
    with pytest.raises(
        BackendNotAvailable, match=r"'tmpbroken' is installed but failed to load"
    ) as exc:
        registry.by_name("tmpbroken")
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)  # the original error is kept


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("pytorch", "inc-torch"),
        ("onnxrt", "inc-ort"),
        ("tensorflow", "inc-tf"),
        ("mxnet", "inc-mxnet"),
    ],
)
def test_naming_a_backend_that_is_not_installed_says_what_to_install(name, package):
    with pytest.raises(BackendNotAvailable, match=f"pip install {package}"):
        registry.by_name(name)


def test_naming_an_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'pytorh'.*did you mean 'pytorch'"):
        registry.by_name("pytorh")


def test_reset_keeps_backends_registered_by_hand():
    registry.reset()
    assert "reference" in registry.available()


class _TorchLikeBase:
    """Stands in for torch.nn.Module in name only: the hint logic reads module names."""


_TorchLikeBase.__module__ = "torch.nn.modules.module"


class UserNet(_TorchLikeBase):
    """A user's network class, defined in the user's own module."""


@pytest.mark.parametrize(
    ("model", "package"),
    [
        (UserNet(), "inc-torch"),
        ("resnet50.onnx", "inc-ort"),
        (Path("models/BERT.ONNX"), "inc-ort"),
        ("frozen_graph.pb", "inc-tf"),
        ("model.keras", "inc-tf"),
        ("resnet-symbol.json", "inc-mxnet"),
    ],
)
def test_no_backend_accepting_the_model_names_its_type_and_the_package(model, package):
    with pytest.raises(ModelError) as exc:
        registry.for_model(model)
    message = str(exc.value)
    assert f"pip install {package}" in message
    assert f"{type(model).__module__}.{type(model).__qualname__}" in message
    assert "installed backends: reference" in message


def test_saved_model_directory_hints_inc_tf(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelError, match="pip install inc-tf"):
        registry.for_model(str(tmp_path))


def test_unknown_model_type_gets_no_made_up_hint():
    with pytest.raises(ModelError) as exc:
        quantization.fit({"weights": [1, 2]}, PostTrainingQuantConfig(approach="dynamic"))
    assert "builtins.dict" in str(exc.value)
    assert "pip install" not in str(exc.value)


def test_a_backend_whose_accepts_raises_is_skipped(caplog, mlp):
    class Exploding(ReferenceBackend):
        name = "exploding"
        priority = 0

        @classmethod
        def accepts(cls, model: Any) -> bool:
            raise RuntimeError("accepts() bug")

    registry.register(Exploding)
    try:
        with caplog.at_level(logging.WARNING, logger="inc_core.backend"):
            backend = registry.for_model(mlp)
    finally:
        registry.unregister("exploding")
    assert backend.name == "reference"
    assert "skipping backend exploding" in caplog.text and "accepts() bug" in caplog.text


def test_backends_are_asked_in_priority_order(mlp):
    class Eager(ReferenceBackend):
        name = "eager"
        priority = 1

    registry.register(Eager)
    try:
        assert registry.for_model(mlp).name == "eager"
    finally:
        registry.unregister("eager")
    assert registry.for_model(mlp).name == "reference"


# _verify: contract checks at registration, naming the plugin and the problem.


def make(name: str = "bad", **attrs: Any) -> type:
    namespace = {"name": name, "__module__": "my_plugin.backend", **attrs}
    return type("BadBackend", (ReferenceBackend,), namespace)


@pytest.mark.parametrize(
    ("backend", "parts"),
    [
        (object, ["builtins.object", "not a subclass of inc_core.backend.Backend"]),
        (ReferenceBackend(), ["not a subclass", "got ReferenceBackend"]),
        (make(package=None), ["my_plugin.backend.BadBackend", "'package'", "None"]),
        (make(name=""), ["my_plugin.backend.BadBackend", "'name'"]),
        (make(convention=3), ["'convention'", "3"]),
        (make(config_backends="default"), ["config_backends", "tuple"]),
        (
            make(config_backends=("default", "cuda")),
            ["config_backends", "'cuda'", "onnxrt_cuda_ep"],
        ),
        (make(priority="high"), ["priority", "'high'"]),
    ],
)
def test_verify_rejects_broken_classes_naming_the_plugin(backend, parts):
    with pytest.raises(TypeError) as exc:
        registry.register(backend)
    for part in parts:
        assert part in str(exc.value)


def test_verify_lists_the_abstract_methods_a_plugin_lacks():
    class Partial(Backend):
        name = "partial"
        package = "inc-partial"
        framework = "numpy"
        convention = "onnxrt"

        @classmethod
        def accepts(cls, model: Any) -> bool:
            return False

        def ops(self, model: Any) -> list[Any]:
            return []

    with pytest.raises(TypeError) as exc:
        registry.register(Partial)
    message = str(exc.value)
    assert "Partial" in message and "'partial'" in message
    assert "calibrate, capability, load, quantize, save" in message
    assert "partial" not in registry.available()


def test_no_backend_error_mentions_plugins_that_failed_to_load(plugins):
    with pytest.raises(ModelError) as exc:
        registry.for_model("resnet50.onnx")
    message = str(exc.value)
    assert "pip install inc-ort" in message
    assert "'tmpbroken' failed to load" in message
    assert "inc_tmp_framework_that_is_not_installed is not installed" in message


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        (
            "convention",
            "tflite",
            r"convention 'tflite' is not a scheme convention.*allowed: tensorflow",
        ),
        ("framework", "keras", r"framework 'keras' is INC's alias of framework 'tensorflow'"),
        ("supports_qat", "yes", r"supports_qat must be a bool, got 'yes'"),
    ],
)
def test_registration_checks_convention_framework_and_qat_naming_the_plugin(attr, value, message):
    broken = type(
        "Broken", (ReferenceBackend,), {"name": "broken", attr: value, "__module__": __name__}
    )
    with pytest.raises(
        TypeError, match=rf"backend class tests\.core\.test_registry\.Broken.*{message}"
    ):
        registry.register(broken)
    assert "broken" not in registry.available()


# A backend from another distribution (tests/core/backend_dist: ``inc-backend-demo``) brings its
# own framework, config backend and device; the core takes them from its class, no core edit.

DEMO_DIST = Path(__file__).parent / "backend_dist"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``inc-backend-demo`` on the path, as ``pip install`` would put it; yields its module."""
    monkeypatch.syspath_prepend(str(DEMO_DIST))
    importlib.invalidate_caches()
    registry.reset()
    yield importlib.import_module("inc_backend_demo")
    monkeypatch.undo()
    importlib.invalidate_caches()
    sys.modules.pop("inc_backend_demo", None)
    registry.reset()


def demo_net(module: Any) -> Any:
    rng = np.random.default_rng(0)
    return module.DemoNet((rng.normal(0, 0.5, (6, 8)), rng.normal(0, 0.5, (8, 3))))


def demo_batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, (20, 6)) for _ in range(4)]


def test_inc_names_are_checked_without_loading_any_plugin(demo):
    sys.modules.pop("inc_backend_demo", None)
    registry.reset()
    for make in (PostTrainingQuantConfig, QuantizationAwareTrainingConfig):
        make(backend="ipex", device="xpu")
        make(backend="onnxrt_dml_ep", device="npu")
    assert "inc_backend_demo" not in sys.modules


def test_a_plugins_config_backend_and_device_are_accepted_once_installed(demo):
    for make in (PostTrainingQuantConfig, QuantizationAwareTrainingConfig):
        conf = make(backend="demo_accel", device="fpga")
        assert (conf.backend, conf.device) == ("demo_accel", "fpga")
    assert registry.config_devices()["demo_accel"] == ("cpu", "fpga")
    assert registry.config_devices()["ipex"] == ("cpu", "xpu")  # inc's own stay


def test_without_the_plugin_its_names_are_not_allowed():
    registry.reset()
    with pytest.raises(
        ConfigError, match=r"backend='demo_accel' is not allowed; allowed: 'default'"
    ):
        PostTrainingQuantConfig(backend="demo_accel", device="fpga")
    with pytest.raises(ConfigError, match=r"device='fpga' is not allowed; allowed: 'cpu', 'gpu'"):
        PostTrainingQuantConfig(device="fpga")


@pytest.mark.parametrize(
    ("values", "parts"),
    [
        (
            {"backend": "demo_acel"},
            ["backend='demo_acel'", "'demo_accel'", "'ipex'", "did you mean"],
        ),
        ({"device": "tpu"}, ["device='tpu'", "'fpga'", "'xpu'"]),
        (
            {"backend": "demo_accel", "device": "gpu"},
            ["device='gpu' is not supported by backend='demo_accel'; allowed: 'cpu', 'fpga'"],
        ),
        ({"backend": "default", "device": "fpga"}, ["backend='default'", "allowed: 'cpu'"]),
    ],
)
def test_errors_list_the_plugins_names_among_the_allowed(demo, values, parts):
    with pytest.raises(ConfigError) as exc:
        PostTrainingQuantConfig(**values)
    for part in parts:
        assert part in str(exc.value)


def test_fit_and_load_use_the_plugin_by_its_own_names(demo, tmp_path):
    model = demo_net(demo)
    conf = PostTrainingQuantConfig(approach="static", backend="demo_accel", device="fpga")
    q = quantization.fit(model, conf, calib_dataloader=demo_batches())
    assert q.backend == "demo"
    assert q.model.ran_on == ("demo_accel", "fpga")  # check_config saw the plugin's names
    assert set(q.plan.quantized_ops()) == {"dense0", "dense1"}
    x = demo_batches()[0]
    assert np.abs(q.model(x) - model(x)).max() < 0.1 * np.abs(model(x)).max()
    q.save(tmp_path / "out")
    back = inc_core.load(tmp_path / "out")
    assert back.backend == "demo" and back.model.ran_on == ("demo_accel", "fpga")
    np.testing.assert_allclose(back.model(x), q.model(x))


def test_the_plugins_framework_is_a_metric_framework(demo):
    assert METRICS("demo").framework == "demo"
    assert registry.frameworks()["keras"] == "tensorflow"


def test_a_framework_no_plugin_names_is_not_allowed():
    registry.reset()
    with pytest.raises(ConfigError, match=r"framework='demo' is not allowed; allowed: 'onnxrt'"):
        METRICS("demo")


def test_the_plugins_package_and_hints_come_from_its_class(demo):
    assert registry.backend_packages()["demo"] == "inc-backend-demo"
    assert registry.backend_packages()["pytorch"] == "inc-torch"  # inc's own, not installed here
    assert registry.install_hint("nets/tiny.DEMO.json") == "inc-backend-demo"
    assert registry.install_hint(demo_net(demo)) == "inc-backend-demo"
    assert registry.install_hint("resnet50.onnx") == "inc-ort"


def test_a_path_is_hinted_by_its_ending_not_its_start():
    # "torch..." / "mxnet..." at the start of a file name says nothing about its format
    assert registry.install_hint("torchvision_resnet.onnx") == "inc-ort"
    assert registry.install_hint("mxnet_export.keras") == "inc-tf"


def test_a_device_the_chosen_backend_lacks_is_an_error_naming_its_devices(mlp, calib_loader):
    class FpgaToo(ReferenceBackend):
        """Another plugin runs config backend 'default' on an fpga too: the config accepts it."""

        name = "fpgatoo"
        devices = {"default": ("cpu", "fpga")}

        @classmethod
        def accepts(cls, model: Any) -> bool:
            return False

    registry.register(FpgaToo)
    try:
        conf = PostTrainingQuantConfig(approach="static", device="fpga")
        with pytest.raises(ConfigError) as exc:
            quantization.fit(mlp, conf, calib_dataloader=calib_loader)
    finally:
        registry.unregister("fpgatoo")
    assert "device='fpga' is not available for numpy models with backend='default'" in str(
        exc.value
    )
    assert "allowed: 'cpu'" in str(exc.value)


@pytest.mark.parametrize(
    ("attrs", "parts"),
    [
        ({"config_backends": ("default", "mine")}, ["'mine'", "set devices = {'mine': ('cpu',)}"]),
        (
            {"devices": {"ipex": ("cpu",)}},
            ["devices names config backend 'ipex'", "config_backends"],
        ),
        ({"devices": {"default": "cpu"}}, ["devices['default']", "tuple", "'cpu'"]),
        ({"devices": {"default": ()}}, ["devices['default']", "non-empty"]),
        ({"devices": [("default", ("cpu",))]}, ["devices must be a dict"]),
        ({"model_modules": "torch"}, ["model_modules", "tuple"]),
        ({"model_suffixes": (".x", "")}, ["model_suffixes", "non-empty"]),
    ],
)
def test_verify_checks_devices_and_hints_naming_the_plugin(attrs, parts):
    with pytest.raises(TypeError) as exc:
        registry.register(make(**attrs))
    assert "my_plugin.backend.BadBackend" in str(exc.value)
    for part in parts:
        assert part in str(exc.value)


def _plugin_class_attributes() -> dict[str, dict[str, Any]]:
    """Each first-party plugin's backend class attributes, read from its source with ``ast``
    (the entry point in its pyproject names the class), so every env checks every plugin."""
    packages = Path(__file__).parents[2] / "packages"
    # inc-ort-gpu ships inc-ort's inc_ort: a module's source is wherever a package holds it
    sources = {
        ".".join(path.relative_to(src).with_suffix("").parts): path
        for src in packages.glob("*/src")
        for path in src.rglob("*.py")
    }
    found: dict[str, dict[str, Any]] = {}
    for pyproject in sorted(packages.glob("inc-*/pyproject.toml")):
        entry_points = tomllib.loads(pyproject.read_text())["project"].get("entry-points", {})
        for ep_name, target in entry_points.get(registry.ENTRY_POINT_GROUP, {}).items():
            module, cls_name = target.split(":")
            tree = ast.parse(sources[module].read_text())
            (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name]
            attrs: dict[str, Any] = {}
            for node in cls.body:
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target_node in targets:
                        if isinstance(target_node, ast.Name):
                            # op_type_aliases may come from a table: not a literal
                            with contextlib.suppress(ValueError):
                                attrs[target_node.id] = ast.literal_eval(node.value)
            found.setdefault(ep_name, attrs)
    return found


def test_the_first_party_list_says_what_the_plugins_classes_say():
    plugins = _plugin_class_attributes()
    assert set(plugins) == set(first_party.BY_NAME)
    for name, attrs in plugins.items():
        listed = first_party.BY_NAME[name]
        assert attrs["name"] == name
        assert (attrs["package"], attrs["framework"]) == (listed.package, listed.framework)
        assert set(attrs.get("config_backends", ("default",))) == set(listed.devices), name
        for config_backend, devices in attrs.get("devices", {}).items():
            assert tuple(devices) == listed.devices[config_backend], name
