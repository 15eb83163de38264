"""The model being quantized: backend, native fp32 model, tuning space and calibration data.

``Session`` is what ``fit``, the default guards, tuning trials and QAT share; it lives here so
that none of them imports the user-facing ``quantization`` module for it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from . import backend as registry
from .backend import Backend
from .data import BatchCheck, CalibrationData, model_inputs, split_calibration
from .errors import BackendNotAvailable, ConfigError, DataError, IncError, ModelError
from .model import QuantizedModel
from .rules import build_space, default_plan
from .space import OpSpace, QuantPlan, TensorRanges
from .weight_only import plan as weight_only_plan
from .weight_only import support as weight_only

log = logging.getLogger(__name__)


def select_backend(model: Any, conf: Any) -> Backend:
    """The backend for ``model``, checked against the config's backend and device."""
    _refuse_saved_result(model)
    try:
        backend = registry.for_model(model)
    except ModelError as exc:
        backend = _by_content(model) or _hinted(model, conf, exc) or _raise_true_cause(model, exc)
    if conf.backend not in backend.config_backends:
        allowed = ", ".join(repr(b) for b in backend.config_backends)
        raise ConfigError(
            f"backend={conf.backend!r} is not available for {backend.framework} models; allowed: {allowed}"
        )
    # the config accepted a device some installed plugin runs conf.backend on; is it this one?
    devices = registry.served_devices(type(backend))[conf.backend]
    if conf.device not in devices:
        allowed = ", ".join(repr(d) for d in devices)
        raise ConfigError(
            f"device={conf.device!r} is not available for {backend.framework} models with "
            f"backend={conf.backend!r}; allowed: {allowed}"
        )
    backend.check_config(conf)
    return backend


def _refuse_saved_result(model: Any) -> None:
    """A folder that ``QuantizedModel.save`` wrote is already int8: say how to read it."""
    if isinstance(model, (str, Path)) and (Path(model) / "inc.json").is_file():
        raise ModelError(
            f"{model} holds a model inc already quantized (it has inc.json): read it back with "
            "inc_core.load(path); to quantize again, give the fp32 model"
        )


def _by_content(model: Any) -> Backend | None:
    """For a file whose name no backend recognised (``model.bin`` holding ONNX): the first
    backend, by priority, whose optional ``accepts_content(path)`` reads it as its own."""
    if not isinstance(model, (str, Path)) or not Path(model).is_file():
        return None
    for cls in sorted(registry.available().values(), key=lambda b: (b.priority, b.name)):
        sniff = getattr(cls, "accepts_content", None)
        if not callable(sniff):
            continue
        try:
            if sniff(Path(model)):
                return cls()
        except Exception as exc:  # a plugin's bug must not hide the others' answer
            log.warning("skipping backend %s: accepts_content() raised %r", cls.name, exc)
    return None


def _hinted(model: Any, conf: Any, exc: ModelError) -> Backend | None:
    """When the plugin the model's type or suffix points at is installed but its ``accepts``
    said no, let its ``load_model`` judge: its error names what the model is and what that
    backend takes (never "pip install" a plugin that is installed); a model it can load is
    quantized by it."""
    hint = registry.install_hint(model)
    for cls in sorted(registry.available().values(), key=lambda b: (b.priority, b.name)):
        if hint is None or cls.package != hint:
            continue
        backend = cls()
        try:
            backend.load_model(model, conf)
        except IncError:
            raise
        except Exception as failed:
            kind = f"{type(model).__module__}.{type(model).__qualname__}"
            where = f" ({model!s})" if isinstance(model, (str, Path)) else ""
            raise ModelError(
                f"{hint} is installed, but its backend {cls.name!r} does not take a model of "
                f"type {kind}{where}: {type(failed).__name__}: {_first_line(failed)}"
            ) from exc
        return backend
    return None


def _raise_true_cause(model: Any, exc: ModelError) -> NoReturn:
    """Re-raise ``exc``, unless the plugin for ``model`` is installed but failed to load: then
    only that cause (``onnxruntime`` missing under ``inc-ort``) and its fix."""
    hint = registry.install_hint(model)
    for name in registry.skipped():
        if hint is None or hint not in _packages_of(name):
            continue
        try:
            registry.by_name(name)
        except BackendNotAvailable as failed:
            cause = failed.__cause__
            if isinstance(cause, BackendNotAvailable):
                # the plugin's own missing_dependency message already names package and fix
                message = str(cause)
            elif isinstance(cause, ModuleNotFoundError) and cause.name:
                module = cause.name.split(".")[0]
                message = (
                    f"{module} is not installed (ModuleNotFoundError: {cause}). "
                    f"Install it with: pip install {module}"
                )
            else:
                message = str(failed)
            raise BackendNotAvailable(
                f"{hint} is installed but its backend {name!r} cannot load: {message}"
            ) from cause
    raise exc


def _packages_of(entry_point: str) -> set[str]:
    """Distribution names (normalised) that may own the backend entry point ``entry_point``."""
    names = {registry.backend_packages().get(entry_point, "")}
    for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP, name=entry_point):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            names.add(re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower())
    return names - {""}


@dataclass
class Session:
    """One fp32 model being quantized: builds candidates for plans, caching calibration.

    This is the seam between ``fit`` and the tuning strategies: a strategy proposes plans, the
    session turns each into a native quantized model.
    """

    #: candidates are built by training (QAT): a trial runs the whole session in its job, and
    #: there are no calibrated ranges, recipes or output probe
    trains: ClassVar[bool] = False

    backend: Backend
    model: Any
    conf: Any
    spaces: list[OpSpace]
    calib_inputs: list[Any] | None = None
    calib_func: Callable[[Any], Any] | None = None
    #: inputs kept out of calibration for the fidelity guard, and where they came from
    held_out: list[Any] = field(default_factory=list)
    held_out_how: str = ""
    #: the first calibration batch whose non-batch axes differ from the first's, said when
    #: the framework then fails (``inc_core.data.BatchCheck``)
    calib_shape_change: str = ""
    _ranges: dict[str, TensorRanges] = field(default_factory=dict)

    @property
    def default_plan(self) -> QuantPlan:
        return default_plan(self.spaces, self.conf)

    def ranges_for(self, plan: QuantPlan) -> TensorRanges:
        """Calibrated ranges for the static ops of ``plan`` (computed once per algorithm mix);
        for a weight-only plan, the GPTQ/AWQ ops' input statistics (``weight_only.stats``)."""
        if weight_only_plan.is_weight_only(plan):
            return self._weight_only_stats(plan)
        static = {
            n: op.activation.algorithm
            for n, op in plan.ops.items()
            if op.approach == "static" and op.activation
        }
        if not static:
            return {}
        key = repr(sorted(static.items())) + repr(
            sorted(plan.recipes.items(), key=lambda kv: kv[0])
        )
        return self._calibrated(
            key,
            plan,
            "static quantization needs calibration data: pass calib_dataloader (or calib_func), "
            "or use PostTrainingQuantConfig(approach='dynamic')",
        )

    def _weight_only_stats(self, plan: QuantPlan) -> TensorRanges:
        """RTN needs no calibration; GPTQ/AWQ ops get their inputs' statistics from the
        backend's ``calibrate``, once per distinct (op, algorithm) need."""
        needs = weight_only_plan.calibrated_ops(plan)
        if not needs:
            return {}
        algorithms = " and ".join(sorted(set(needs.values())))
        return self._calibrated(
            "weight_only " + repr(sorted(needs.items())),
            plan,
            f"algorithm {algorithms} reads calibration activations: pass calib_dataloader, "
            "or use algorithm 'RTN', which needs none",
        )

    def _calibrated(self, key: str, plan: QuantPlan, without_data: str) -> TensorRanges:
        """The backend's calibration for ``plan`` through the dataloader or ``calib_func``,
        once per ``key``; ``ConfigError(without_data)`` when the run has neither."""
        if key not in self._ranges:
            if self.calib_inputs is not None:
                self._ranges[key] = self._calibrate(plan)
            elif self.calib_func is not None:
                self._ranges[key] = self.backend.calibrate_with_func(
                    self.model, self.calib_func, plan
                )
            else:
                raise ConfigError(without_data)
        return self._ranges[key]

    def _calibrate(self, plan: QuantPlan) -> TensorRanges:
        assert self.calib_inputs is not None
        try:
            return self.backend.calibrate(self.model, self.calib_inputs, plan)
        except IncError:
            raise
        except Exception as exc:
            if not self.calib_shape_change:
                raise
            # batches of several shapes are valid for dynamic axes, so they pass the data
            # check; when the framework then fails, the batch that changed shape is the
            # likely cause, and the raw kernel error alone does not say which batch it was
            raise DataError(
                f"calibration failed ({type(exc).__name__}: {_first_line(exc)}); "
                f"{self.calib_shape_change}"
            ) from exc

    def build(self, plan: QuantPlan) -> Any:
        """The native quantized model for ``plan``."""
        return self.backend.quantize(self.model, plan, self.ranges_for(plan))

    def wrap(
        self, native: Any, plan: QuantPlan, report: dict[str, Any] | None = None
    ) -> QuantizedModel:
        return QuantizedModel(
            model=native,
            backend=self.backend.name,
            plan=self.backend.effective_plan(self.model, plan),
            config=self.conf.to_dict(),
            report=report or {},
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def without_rules(conf: Any) -> Any:
    """``conf`` without its op_type_dict/op_name_dict: what the rules took away is then known."""
    return dataclasses.replace(conf, op_type_dict=None, op_name_dict=None)


def _with_example(backend: Backend, conf: Any, calib: list[Any]) -> Any:
    """``conf`` with ``example_inputs`` set to the first calibration batch when the user gave
    none, checked by the backend again: the example a backend traces with reaches it through
    ``check_config`` (the one place it keeps state), in this process and in every trial job an
    executor runs, instead of being kept from ``calibrate`` for ``quantize``."""
    if not calib or getattr(conf, "example_inputs", _ABSENT) is not None:
        return conf
    filled = dataclasses.replace(conf, example_inputs=calib[0])
    backend.check_config(filled)
    return filled


_ABSENT = object()


def prepare_session(
    model: Any,
    conf: Any,
    calib_dataloader: Iterable[Any] | None = None,
    calib_func: Callable[[Any], Any] | None = None,
    hold_out: bool = False,
) -> Session:
    """Everything up to the first candidate: backend, native model, tuning space, calib data.

    With ``hold_out`` a few calibration batches are kept apart for the fidelity guard (see
    ``inc_core.data.split_calibration``).
    """
    backend = select_backend(model, conf)
    weight_only.check_backend(backend, conf, calib_dataloader is not None or calib_func is not None)
    native = backend.load_model(model, conf)
    ops = backend.ops(native)
    if not ops:
        approach = "static" if conf.approach == "auto" else conf.approach
        kinds = ", ".join(sorted(backend.capability(approach, conf.device)))
        raise ModelError(
            f"the model has no op that {backend.framework} can quantize; {backend.framework} "
            f"quantizes these op types ({approach}): {kinds or 'none'}"
        )
    has_calibration = calib_dataloader is not None or calib_func is not None
    approach = conf.approach
    if approach == "auto":
        approaches = ("static", "dynamic") if has_calibration else ("dynamic",)
    else:
        approaches = (approach,)
    capabilities = {a: backend.capability(a, conf.device) for a in approaches}
    if approach == "weight_only":
        spaces = weight_only_plan.build_space(
            ops, capabilities[approach], conf, backend.op_type_aliases
        )
    else:
        spaces = build_space(ops, capabilities, conf, backend.op_type_aliases)
    if approach == "weight_only" and not any(c.quantized for s in spaces for c in s.choices):
        kinds = ", ".join(sorted(capabilities[approach])) or "none"
        raise ConfigError(
            f"approach='weight_only': no op of the model is left to quantize (ops whose weight "
            f"{backend.framework} can quantize have types: {kinds}; op types in the model: "
            f"{', '.join(sorted({op.type for op in ops}))}); remove a rule keeping ops in fp32"
        )
    if not any(choice.quantized for s in spaces for choice in s.choices):
        types = ", ".join(sorted({op.type for op in ops}))
        rules = [key for key in ("op_type_dict", "op_name_dict") if getattr(conf, key, None)]
        if rules and any(
            choice.quantized
            for s in build_space(ops, capabilities, without_rules(conf), backend.op_type_aliases)
            for choice in s.choices
        ):
            raise ConfigError(
                f"{' and '.join(rules)} keep every op of the model in fp32 "
                f"({'; '.join(f'{key}={getattr(conf, key)!r}' for key in rules)}): nothing is "
                f"left to quantize. Remove a rule or allow int8 for some op (op types: {types})"
            )
        if approach == "auto" and not has_calibration:
            raise ModelError(
                f"approach='auto' without calibration data means dynamic quantization, and "
                f"{backend.framework} cannot quantize any op of this model dynamically (op types: "
                f"{types}); pass calib_dataloader for static quantization"
            )
        allowed = {a: ", ".join(sorted(c)) or "none" for a, c in capabilities.items()}
        hint = (
            "; static quantization (approach='static' with calib_dataloader) covers more op types"
            if approach == "dynamic"
            else ""
        )
        raise ModelError(
            f"no op of the model can be quantized with approach {approach!r} on "
            f"{backend.framework}: it quantizes these op types ({approach}): "
            f"{'; '.join(allowed.values())}; quantizable op types found in the model: "
            f"{types}{hint}"
        )
    if calib_dataloader is None:
        return Session(backend, native, conf, spaces, None, calib_func)
    samples = (
        conf.calibration_sampling_size[0] if hasattr(conf, "calibration_sampling_size") else None
    )
    if hold_out:
        data = split_calibration(calib_dataloader, samples, "calib_dataloader")
    else:
        check = BatchCheck("calib_dataloader")
        inputs = list(model_inputs(calib_dataloader, samples, "calib_dataloader", check))
        data = CalibrationData(inputs, shape_change=check.shape_change)
    return Session(
        backend,
        native,
        _with_example(backend, conf, data.calib),
        spaces,
        data.calib,
        calib_func,
        held_out=data.held_out,
        held_out_how=data.how,
        calib_shape_change=data.shape_change,
    )
