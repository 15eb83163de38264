"""inc's own backend plugins, listed once: what the core says about them when they are absent.

A user may build ``PostTrainingQuantConfig(backend="ipex")`` or ask for ``METRICS("pytorch")``
on a machine without inc-torch, and a model whose plugin is not installed gets "pip install
inc-torch". Those answers come from this list. Everything else is read from the installed
backends' class attributes (``inc_core.backend.Backend``: ``config_backends``, ``devices``,
``framework``, ``package``, ``model_modules``, ``model_suffixes``), so a plugin from another
distribution needs no edit here; ``inc_core.backend`` joins the two (``config_devices``,
``frameworks``, ``backend_packages``, ``install_hint``). A test checks that each first-party
plugin's class says what its entry here says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FirstParty:
    """One of inc's plugin distributions, as the core needs to know it when it is absent."""

    #: entry point name in ``inc.backends`` (``Backend.name``)
    name: str
    #: the distribution to ``pip install``
    package: str
    #: ``Backend.framework``: the name ``METRICS`` and reports use
    framework: str
    #: INC 2.x's other spellings of the framework, which ``METRICS`` also takes
    framework_aliases: tuple[str, ...]
    #: config ``backend`` value -> devices (the spec's "backend and device" table)
    devices: Mapping[str, tuple[str, ...]]
    #: top-level modules of the model types it takes (``type(model).__module__`` prefixes)
    model_modules: tuple[str, ...]
    #: endings of the model file names it takes (lower case)
    model_suffixes: tuple[str, ...]


FIRST_PARTY: tuple[FirstParty, ...] = (
    FirstParty(
        name="onnxrt",
        package="inc-ort",
        framework="onnxrt",
        framework_aliases=(
            "onnxruntime",
            "onnxrt_qlinearops",
            "onnxrt_integerops",
            "onnxrt_qdq",
            "onnxrt_qoperator",
        ),
        devices={
            "default": ("cpu",),
            "onnxrt_trt_ep": ("gpu",),
            "onnxrt_cuda_ep": ("gpu",),
            "onnxrt_dnnl_ep": ("cpu",),
            "onnxrt_dml_ep": ("npu",),
        },
        model_modules=("onnx", "onnxruntime"),
        model_suffixes=(".onnx",),
    ),
    FirstParty(
        name="pytorch",
        package="inc-torch",
        framework="pytorch",
        framework_aliases=("pytorch_fx", "pytorch_ipex", "ipex"),
        devices={"default": ("cpu",), "ipex": ("cpu", "xpu")},
        model_modules=("torch", "lightning", "pytorch_lightning"),
        model_suffixes=(),
    ),
    FirstParty(
        name="tensorflow",
        package="inc-tf",
        framework="tensorflow",
        framework_aliases=("tensorflow_itex", "keras"),
        devices={"default": ("cpu",), "itex": ("cpu", "gpu")},
        model_modules=("keras", "tensorflow", "tf_keras"),
        # "saved_model": a SavedModel folder (install_hint names it so)
        model_suffixes=(".pb", ".h5", ".keras", "saved_model"),
    ),
    FirstParty(
        name="mxnet",
        package="inc-mxnet",
        framework="mxnet",
        framework_aliases=(),
        devices={"default": ("cpu",)},
        model_modules=("mxnet",),
        model_suffixes=("-symbol.json", ".params"),
    ),
)

BY_NAME: dict[str, FirstParty] = {plugin.name: plugin for plugin in FIRST_PARTY}


def _backend_devices() -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for plugin in FIRST_PARTY:
        for backend, devices in plugin.devices.items():
            known = table.get(backend, ())
            table[backend] = known + tuple(d for d in devices if d not in known)
    return table


#: config backend -> devices, for inc's own plugins (installed or not)
BACKEND_DEVICES: dict[str, tuple[str, ...]] = _backend_devices()
#: every device of that table
DEVICES: tuple[str, ...] = tuple(dict.fromkeys(d for ds in BACKEND_DEVICES.values() for d in ds))
#: framework name or INC alias -> framework, for inc's own plugins
FRAMEWORKS: dict[str, str] = {
    name: plugin.framework
    for plugin in FIRST_PARTY
    for name in (plugin.framework, *plugin.framework_aliases)
}
