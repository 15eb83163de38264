"""The plugin contract and the registry that finds plugins through entry points.

A plugin package registers a ``Backend`` subclass in the entry point group ``inc.backends``::

    [project.entry-points."inc.backends"]
    onnxrt = "inc_ort.backend:OrtBackend"

The core owns the tuning loop; a backend answers questions about one framework's models.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from . import first_party
from .errors import BackendNotAvailable, ModelError, not_allowed
from .plugins import PluginGroup, describe
from .scheme import CONVENTIONS
from .space import Capability, OpInfo, QuantPlan, TensorRanges

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "inc.backends"


class Backend(abc.ABC):
    """One framework's quantization engine as the core sees it.

    Class attributes describe the plugin and are checked at registration. The methods, by group:

    * required (abstract): ``accepts``, ``ops``, ``capability``, ``calibrate``, ``quantize``,
      ``save``, ``load``; the core calls them in the order ``accepts`` -> ``load_model`` ->
      ``check_config`` -> ``ops`` / ``capability`` -> ``calibrate`` -> ``quantize`` -> ``save``
      (``load`` from ``inc_core.load``).
    * measurement (optional; the guards and objectives use what a backend offers): ``predict``,
      ``evaluate``, ``latency`` (time with ``inc_core.timing.latency``), ``model_size``,
      ``effective_plan``, ``op_outputs``, ``runs_as``, ``fingerprint``.
    * QAT (set ``supports_qat`` and implement both): ``prepare_qat``, ``convert_qat``.
    * optional: ``accepts_content``, ``load_model``, ``check_config``, ``user_model``,
      ``calibrate_with_func``, ``variants``, ``kernel_groups``, ``versions``.

    State: ``check_config(conf)`` is the one place a backend may keep per-run state (values
    read from ``conf``). A trial run on an executor builds a fresh instance and calls only
    ``check_config`` before ``quantize``, so every other hook must work from its arguments and
    that state alone; caches of values the arguments determine (inference sessions) are fine.
    """

    #: entry point name and the ``backend`` key written to inc.json, e.g. "onnxrt"
    name: ClassVar[str]
    #: distribution to install for this backend, e.g. "inc-ort"
    package: ClassVar[str]
    #: value of ``METRICS(framework)`` and of the spec's framework names, e.g. "onnxrt"
    framework: ClassVar[str]
    #: scheme convention in ``inc_core.scheme`` this backend's kernels follow
    convention: ClassVar[str]
    #: config ``backend`` values this plugin serves (the spec's backend table)
    config_backends: ClassVar[tuple[str, ...]] = ("default",)
    #: config backend -> the devices it runs on, for the config backends that are not inc's
    #: own or that this plugin runs on more devices (``PostTrainingQuantConfig`` accepts them
    #: once the plugin is installed); the others run on ``inc_core.first_party``'s devices
    devices: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: top-level modules of the model types this backend takes, e.g. ("torch",): a model of
    #: such a type that ``accepts`` refused is judged by this backend's ``load_model``
    model_modules: ClassVar[tuple[str, ...]] = ()
    #: endings of the model file names this backend takes (lower case), e.g. (".onnx",)
    model_suffixes: ClassVar[tuple[str, ...]] = ()
    #: generic op type names users may write in ``op_type_dict`` -> native types
    op_type_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: lower is asked first when several backends are installed
    priority: ClassVar[int] = 100
    #: whether ``prepare_qat``/``convert_qat`` are implemented (quantization-aware training)
    supports_qat: ClassVar[bool] = False
    #: whether ``approach="weight_only"`` (int2-8 weights, fp activations) is implemented
    supports_weight_only: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def accepts(cls, model: Any) -> bool:
        """Whether ``model`` (an object or a path) is this framework's.

        Called for every installed backend on each ``fit``; must not import the framework
        unless the model could be its own (check ``type(model).__module__`` or a file suffix).
        """

    @classmethod
    def accepts_content(cls, path: Path) -> bool:
        """Whether the file at ``path``, whose name no backend recognised, holds this
        framework's model (``model.bin`` holding ONNX). Read as little as needed."""
        return False

    def load_model(self, model: Any, conf: Any) -> Any:
        """Turn the user's model (object or path) into the object the other hooks take.

        Never mutates or moves the user's object or file: copy when a change is needed.
        """
        return model

    @abc.abstractmethod
    def ops(self, model: Any) -> list[OpInfo]:
        """The quantizable ops, in model order, named as users write them in ``op_name_dict``."""

    @abc.abstractmethod
    def capability(self, approach: str, device: str) -> Capability:
        """Per op type, the schemes the kernels run for ``approach`` ("static"/"dynamic")."""

    def check_config(self, conf: Any) -> None:
        """Reject settings this backend cannot honour (device absent, provider missing, ...).

        Called once per run before any other hook but ``accepts``/``load_model``, and again in
        every trial a job runs on an executor (on a fresh instance). The one place a backend
        may keep per-run state, read from ``conf`` (e.g. ``conf.backend`` for ``capability``,
        ``conf.example_inputs`` for tracing: the core fills it with the first calibration batch
        when the user gave none).
        """

    @abc.abstractmethod
    def calibrate(self, model: Any, dataloader: Iterable[Any], plan: QuantPlan) -> TensorRanges:
        """Run ``model`` on the calibration inputs and return activation ranges for ``plan``.

        ``dataloader`` yields model inputs only (labels already stripped by the core), at most
        ``calibration_sampling_size`` samples. Called once per distinct calibration need.
        """

    @abc.abstractmethod
    def quantize(self, model: Any, plan: QuantPlan, ranges: TensorRanges) -> Any:
        """Build the quantized native model for ``plan``. Pure: ``model`` is not modified."""

    def evaluate(self, model: Any, dataloader: Iterable[Any], metric: Any) -> float:
        """Run ``model`` over ``(input, label)`` batches, feed ``metric.update(pred, label)``.

        Called for the baseline and each candidate when the user gave ``eval_dataloader``.
        """
        from .data import labelled_batches

        metric.reset()
        for inputs, label in labelled_batches(dataloader):
            metric.update(self.predict(model, inputs), label)
        return float(metric.result())

    def predict(self, model: Any, inputs: Any) -> Any:
        """Outputs of ``model`` on one batch of inputs, as numpy (evaluation, sensitivity)."""
        raise NotImplementedError(f"backend {self.name!r} has no predict")

    def effective_plan(self, model: Any, plan: QuantPlan) -> QuantPlan:
        """``plan`` as ``quantize`` really runs it on ``model``: ops that recipes (first/last
        conv or matmul, pre/post processing) keep in fp32 shown as fp32.

        Called when a candidate is wrapped, so reports and inc.json say what ran.
        """
        return plan

    def fingerprint(self, model: Any) -> str | None:
        """A digest of ``model``'s weights (what ``load_model`` returned), or None if unknown.

        Called once per tuning run: a tuning history is resumed only for the same weights, so
        a model with the same ops but other weights (retrained, zeroed) is never scored by the
        old trials. Default: ``inc_core.digest.model_digest``, which finds weights through
        ``state_dict()``, ``get_weights()``, ``collect_params()``, an ONNX graph's initializers
        and nodes, or arrays in dataclasses. Override when the weights live elsewhere (files
        the native object only points to).
        """
        from .digest import model_digest

        return model_digest(model)

    def user_model(self, model: Any) -> Any:
        """The object handed to the user's ``eval_func`` for a native model (default: itself)."""
        return model

    def calibrate_with_func(self, model: Any, calib_func: Any, plan: QuantPlan) -> TensorRanges:
        """Ranges from the user's ``calib_func(model)`` running the model (frameworks with hooks)."""
        raise NotImplementedError(
            f"backend {self.name!r} needs calib_dataloader; calib_func is not supported"
        )

    def latency(self, model: Any, inputs: Sequence[Any]) -> float:
        """Median seconds per batch over ``inputs``; used by the ``performance`` objective."""
        raise NotImplementedError(f"backend {self.name!r} does not measure latency")

    def model_size(self, model: Any) -> int:
        """Bytes of the serialized model; used by the ``modelsize`` objective."""
        raise NotImplementedError(f"backend {self.name!r} does not measure model size")

    def op_outputs(self, model: Any, inputs: Any, ops: Sequence[str]) -> dict[str, Any]:
        """The first output of each op named in ``ops`` on one batch of ``inputs``, as numpy.

        Called by the fidelity guard on the fp32 model (what ``load_model`` returned) and on an
        int8 model (what ``quantize`` returned) to compute each quantized op's ``sqnr_db``; the
        two results are compared op by op, so both must be float arrays of the same shape. An op
        the runtime no longer exposes (fused away) is left out. Default: no per-op outputs.
        """
        return {}

    def runs_as(self, model: Any) -> dict[str, str]:
        """Op name -> what the runtime really executes for it in ``model`` (an int8 model), e.g.
        ``"QLinearConv"`` or ``"Conv (fp32)"``; shown as ``runs_as`` in ``op_report()``.

        Called once on the returned model. Default: nothing known.
        """
        return {}

    def variants(self, model: Any, plan: QuantPlan) -> list[tuple[str, QuantPlan]]:
        """Named other builds of ``plan`` that run the same ops at int8 with other kernels,
        e.g. ``[("QOperator", plan with quant_format="QOperator")]`` for a QDQ plan.

        Called by the speed guard on the fp32 model (what ``load_model`` returned) when the
        default int8 model is not clearly faster than fp32: each variant is built with the
        same ranges, checked against the fidelity threshold and timed, and the fastest is
        kept. Offer only what the user left open (not a ``quant_format`` they set). Default:
        none.
        """
        return []

    def kernel_groups(self, model: Any) -> dict[str, list[str]]:
        """Named groups of ops whose int8 kernels pay differently from the rest of their op
        type, e.g. ``{"Conv (depthwise)": [...], "MatMul (attention)": [...]}``.

        Called by the speed guard on the fp32 model when int8 is not faster: each group is
        tried in fp32 on its own before whole op types are. Default: none.
        """
        return {}

    @abc.abstractmethod
    def save(self, model: Any, directory: Path) -> list[str]:
        """Write ``model`` in the framework's native format into ``directory`` (which exists).

        Returns the relative paths written. No pickle of code.
        """

    @abc.abstractmethod
    def load(self, directory: Path, **kwargs: Any) -> Any:
        """Read back what ``save`` wrote; ``kwargs`` are the user's (e.g. ``model=`` for torch)."""

    # QAT hooks (frameworks that train); defaults say clearly that this backend has none.
    def prepare_qat(self, model: Any, plan: QuantPlan) -> Any:
        """Return a copy of ``model`` with fake quantization inserted for ``plan``, ready to train.

        Called by ``CompressionManager.callbacks.on_train_begin`` and by the native callbacks.
        """
        raise NotImplementedError(f"backend {self.name!r} has no quantization-aware training")

    def convert_qat(self, model: Any, plan: QuantPlan) -> Any:
        """Turn a fake-quantized trained model into the int8 native model."""
        raise NotImplementedError(f"backend {self.name!r} has no quantization-aware training")

    def versions(self) -> dict[str, str]:
        """Installed versions of the framework packages, written into inc.json."""
        return {}


def register(backend: type[Backend]) -> type[Backend]:
    """Register a backend class by hand (entry points do this for installed plugins)."""
    _verify(backend)
    _plugins.registered[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _plugins.unregister(name)


def reset() -> None:
    """Forget what the entry points gave, so the next lookup scans them again.

    Backends registered by hand stay. For tests, and after installing a plugin at run time.
    """
    _plugins.reset()


def _verify(backend: Any) -> None:
    """Check a plugin class against the contract; the message names the plugin and the problem."""
    if not (isinstance(backend, type) and issubclass(backend, Backend)):
        raise TypeError(
            f"{describe(backend)} is not a subclass of inc_core.backend.Backend "
            f"(got {type(backend).__name__})"
        )
    where = f"backend class {describe(backend)}"
    for attr in ("name", "package", "framework", "convention"):
        value = getattr(backend, attr, None)
        if not isinstance(value, str) or not value:
            raise TypeError(
                f"{where} must set class attribute {attr!r} to a non-empty string, got {value!r}"
            )
    config_backends = getattr(backend, "config_backends", None)
    if not isinstance(config_backends, tuple) or not all(
        isinstance(b, str) for b in config_backends
    ):
        raise TypeError(
            f"{where}: config_backends must be a tuple of config backend values, "
            f"got {config_backends!r}"
        )
    _verify_devices(backend, where)
    for attr in ("model_modules", "model_suffixes"):
        value = getattr(backend, attr, None)
        if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
            raise TypeError(f"{where}: {attr} must be a tuple of non-empty strings, got {value!r}")
    if backend.convention not in CONVENTIONS:
        raise TypeError(
            f"{where}: convention {backend.convention!r} is not a scheme convention of "
            f"inc_core.scheme; allowed: {', '.join(CONVENTIONS)}"
        )
    canonical = first_party.FRAMEWORKS.get(backend.framework, backend.framework)
    if canonical != backend.framework:
        # METRICS and reports know a framework by one name; an alias would split them
        raise TypeError(
            f"{where}: framework {backend.framework!r} is INC's alias of framework "
            f"{canonical!r}; set framework = {canonical!r}"
        )
    if not isinstance(backend.priority, int) or isinstance(backend.priority, bool):
        raise TypeError(f"{where}: priority must be an int, got {backend.priority!r}")
    for flag in ("supports_qat", "supports_weight_only"):
        if not isinstance(getattr(backend, flag), bool):
            raise TypeError(f"{where}: {flag} must be a bool, got {getattr(backend, flag)!r}")
    missing = [
        hook
        for hook in ("prepare_qat", "convert_qat")
        if backend.supports_qat and getattr(backend, hook) is getattr(Backend, hook)
    ]
    if missing:
        raise TypeError(
            f"{where} ({backend.name!r}) sets supports_qat = True but does not implement: "
            f"{', '.join(missing)}"
        )
    abstract = sorted(getattr(backend, "__abstractmethods__", ()))
    if abstract:
        raise TypeError(f"{where} ({backend.name!r}) does not implement: {', '.join(abstract)}")


def _verify_devices(backend: type[Backend], where: str) -> None:
    """Every config backend the plugin serves runs on named devices: its own ``devices``
    entry, or inc's table for inc's config backends."""
    devices = getattr(backend, "devices", None)
    if not isinstance(devices, Mapping):
        raise TypeError(
            f"{where}: devices must be a dict of config backend -> devices, got {devices!r}"
        )
    for config_backend, names in devices.items():
        if config_backend not in backend.config_backends:
            raise TypeError(
                f"{where}: devices names config backend {config_backend!r}, which is not in "
                f"config_backends {backend.config_backends!r}; add it there or drop it here"
            )
        if (
            not isinstance(names, tuple)
            or not names
            or not all(isinstance(d, str) and d for d in names)
        ):
            raise TypeError(
                f"{where}: devices[{config_backend!r}] must be a non-empty tuple of device "
                f"names such as ('cpu',), got {names!r}"
            )
    unknown = [
        b
        for b in backend.config_backends
        if b not in devices and b not in first_party.BACKEND_DEVICES
    ]
    if unknown:
        example = ", ".join(f"{b!r}: ('cpu',)" for b in unknown)
        raise TypeError(
            f"{where}: config_backends {unknown} are not inc's config backend values and "
            f"devices does not say where they run; set devices = {{{example}}} (inc's own: "
            f"{', '.join(first_party.BACKEND_DEVICES)})"
        )


def served_devices(backend: type[Backend]) -> dict[str, tuple[str, ...]]:
    """Config backend -> devices for one backend class: its ``devices``, else inc's table."""
    return {
        b: tuple(backend.devices.get(b) or first_party.BACKEND_DEVICES[b])
        for b in backend.config_backends
    }


#: the installed backends: hand-registered and loaded from the inc.backends entry points
_plugins: PluginGroup[type[Backend]] = PluginGroup(ENTRY_POINT_GROUP, "backend", _verify, log)


def available() -> dict[str, type[Backend]]:
    """Installed, loadable backends by name."""
    return _plugins.available()


def skipped() -> dict[str, str]:
    """Backends whose plugin failed to load, with why."""
    return _plugins.skipped_reasons()


def _by_priority() -> list[type[Backend]]:
    return sorted(available().values(), key=lambda b: (b.priority, b.name))


def config_devices() -> dict[str, tuple[str, ...]]:
    """Config backend -> devices: inc's own table joined with every installed backend's.

    Loads the plugins; ``PostTrainingQuantConfig`` asks only for a backend or device name
    that is not inc's own.
    """
    table = dict(first_party.BACKEND_DEVICES)
    for backend in _by_priority():
        for config_backend, devices in served_devices(backend).items():
            known = table.get(config_backend, ())
            table[config_backend] = known + tuple(d for d in devices if d not in known)
    return table


def frameworks() -> dict[str, str]:
    """Framework name or INC alias -> framework: inc's own joined with the installed backends'."""
    names = dict(first_party.FRAMEWORKS)
    for backend in _by_priority():
        names.setdefault(backend.framework, backend.framework)
    return names


def backend_packages() -> dict[str, str]:
    """Backend name -> the distribution to install: inc's own plugins, then the installed ones
    (their ``package``; for one that failed to load, the distribution of its entry point)."""
    packages = {plugin.name: plugin.package for plugin in first_party.FIRST_PARTY}
    for name, backend in available().items():
        packages[name] = backend.package
    for name in _plugins.skipped:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
            dist = getattr(ep, "dist", None)
            if dist is not None and name not in packages:
                packages[name] = dist.metadata["Name"]
    return packages


def _hints() -> list[tuple[tuple[str, ...], tuple[str, ...], str]]:
    """(model modules, model file endings, package) per backend: the installed backends by
    priority (a first-party class that does not say falls back on inc's list), then inc's
    plugins that are not installed."""
    hints = []
    installed = _by_priority()
    for backend in installed:
        known = first_party.BY_NAME.get(backend.name)
        modules = backend.model_modules or (known.model_modules if known else ())
        suffixes = backend.model_suffixes or (known.model_suffixes if known else ())
        hints.append((modules, suffixes, backend.package))
    names = {backend.name for backend in installed}
    hints += [
        (plugin.model_modules, plugin.model_suffixes, plugin.package)
        for plugin in first_party.FIRST_PARTY
        if plugin.name not in names
    ]
    return hints


def by_name(name: str) -> Backend:
    """The backend registered as ``name``; an error (never a skip) when it is not installed."""
    backends = available()
    if name in backends:
        return backends[name]()
    if name in _plugins.skipped:
        raise BackendNotAvailable(
            f"backend {name!r} is installed but failed to load: {_plugins.skipped[name]}"
        ) from _plugins.errors.get(name)
    if name in first_party.BY_NAME:
        package = first_party.BY_NAME[name].package
        raise BackendNotAvailable(
            f"backend {name!r} is not installed. Install it with: pip install {package}"
        )
    raise not_allowed("backend name", name, sorted(set(backends) | set(first_party.BY_NAME)))


def install_hint(model: Any) -> str | None:
    """The plugin distribution that would handle ``model``, or None when we cannot tell.

    Judged by the modules of ``type(model)`` and its bases, or by a path's ending.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        names = [str(model).lower().rstrip("/\\")]
        if path.is_dir() and (path / "saved_model.pb").is_file():
            names.append("saved_model")
        hints = [(suffixes, package) for _, suffixes, package in _hints()]
        for name in names:
            for suffixes, package in hints:
                if suffixes and name.endswith(suffixes):
                    return package
        return None
    by_module = [(modules, package) for modules, _, package in _hints()]
    for cls in type(model).__mro__:
        module = cls.__module__.lower()
        for modules, package in by_module:
            if modules and module.startswith(modules):
                return package
    return None


def for_model(model: Any) -> Backend:
    """The first installed backend (by priority) that accepts ``model``."""
    backends = _by_priority()
    for backend in backends:
        try:
            accepted = backend.accepts(model)
        except Exception as exc:  # one plugin's bug must not hide the others
            log.warning(
                "skipping backend %s: accepts() raised %s: %s",
                backend.name,
                type(exc).__name__,
                exc,
            )
            continue
        if accepted:
            return backend()
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    where = f" ({model!s})" if isinstance(model, (str, Path)) else ""
    hint = install_hint(model)
    installed = ", ".join(b.name for b in backends) or "none"
    suffix = f" Install the plugin for it: pip install {hint}" if hint else ""
    failed = "".join(
        f" Backend {n!r} failed to load: {why}." for n, why in _plugins.skipped.items()
    )
    raise ModelError(
        f"no installed inc backend accepts a model of type {kind}{where}; "
        f"installed backends: {installed}.{suffix}{failed}"
    )
