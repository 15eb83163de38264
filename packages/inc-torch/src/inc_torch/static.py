"""Static (calibrated) quantization of nn.Modules: FX graph mode, with an eager fallback.

FX traces the model, fuses Conv+ReLU and keeps activations int8 between consecutive quantized
modules. Models FX cannot trace (data-dependent control flow, untraceable calls) go through
the eager path instead: each quantized module is wrapped as quant -> module -> dequant, which
works for any module structure at the cost of a (de)quantize around every op.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.quantization import FakeQuantizeBase, QuantWrapper
from torch.ao.quantization import convert as eager_convert
from torch.ao.quantization import prepare as eager_prepare
from torch.ao.quantization import prepare_qat as eager_prepare_qat
from torch.ao.quantization.backend_config.onednn import get_onednn_backend_config
from torch.ao.quantization.backend_config.x86 import get_x86_backend_config
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from inc_core.errors import ModelError
from inc_core.space import QuantPlan, TensorRanges

from . import _ops
from ._data import call
from .observers import IncActivationObserver
from .qconfig import Settings, qat_qconfig, static_mapping, static_qconfig

log = logging.getLogger(__name__)

MODES = ("fx", "eager")


@dataclass
class Prepared:
    """A model with observers (or fake quantization) inserted, ready to calibrate or train."""

    model: nn.Module
    mode: str
    #: the tensors observed, by a name stable across plans that quantize the same ops
    observers: dict[str, IncActivationObserver]
    #: why FX was not used, when mode is "eager"
    fx_error: str = ""


def backend_config(settings: Settings) -> Any:
    """The FX backend config of the engine, for prepare and convert alike."""
    return engine_config(settings.qengine)


def engine_config(qengine: str) -> Any:
    """The FX backend config of torch's quantized engine ``qengine``."""
    return get_onednn_backend_config() if qengine == "onednn" else get_x86_backend_config()


class _Flatten(nn.Module):
    """``nn.Flatten`` as FX traces through it: a ``torch.flatten`` call, which torch's FX
    lowering keeps on int8. The module itself is a leaf that it wraps in a dequantize, a float
    copy and a quantize (3% of the wider benchmark CNN's time)."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


def _traceable_flattens(model: nn.Module) -> None:
    """Swap ``model``'s ``nn.Flatten`` modules (a copy's) for ``_Flatten``."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Flatten:
            _ops.set_submodule(model, name, _Flatten(module.start_dim, module.end_dim))


class _FloatPReLU(nn.PReLU):
    """``nn.PReLU`` that FX traces into an ``F.prelu`` call, which stays float.

    torch's FX lowering turns every ``dequantize -> nn.PReLU -> quantize`` (a float PReLU
    between two int8 ops) into its quantized PReLU, and fails doing so without a qconfig for
    the PReLU; with one, that kernel gives wrong results (torch 2.13: positive inputs are
    scaled by the slope too, e.g. 5.6 -> 2.2 with slopes in [0, 0.4]; tests/torch).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


def _float_prelus(model: nn.Module) -> None:
    """Swap ``model``'s ``nn.PReLU`` modules (a copy's) for ``_FloatPReLU``, same weights."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.PReLU:
            swapped = _FloatPReLU.__new__(_FloatPReLU)
            swapped.__dict__ = dict(module.__dict__)
            _ops.set_submodule(model, name, swapped)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.ao.quantization's FX/eager APIs warn that they are deprecated on every call; the
    README explains the engine choice, a user needs no warning per tuning candidate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
        yield


def prepare(
    model: nn.Module,
    plan: QuantPlan,
    settings: Settings,
    example_inputs: tuple[Any, ...],
    *,
    qat: bool = False,
    mode: str | None = None,
) -> Prepared:
    """Insert observers for ``plan``'s static ops into ``model`` (which this call may modify).

    ``mode`` None tries FX, then eager; "fx" or "eager" forces one (used when reloading).
    """
    fx_error = ""
    if mode in (None, "fx"):
        try:
            # a failed FX attempt must leave ``model`` intact for the eager path
            candidate = copy.deepcopy(model) if mode is None else model
            return _named(_prepare_fx(candidate, plan, settings, example_inputs, qat))
        except ModelError:
            raise
        except Exception as exc:
            if mode == "fx":
                raise ModelError(f"FX graph mode could not prepare the model: {exc}") from exc
            fx_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.info("FX cannot trace %s (%s); using eager mode", type(model).__name__, fx_error)
    try:
        prepared = _prepare_eager(model, plan, settings, qat, example_inputs)
    except Exception as exc:
        raise ModelError(
            f"neither FX graph mode ({fx_error or 'not tried'}) nor eager mode "
            f"({type(exc).__name__}: {exc}) could prepare {type(model).__name__} for quantization"
        ) from exc
    prepared.fx_error = fx_error
    return _named(prepared)


def _named(prepared: Prepared) -> Prepared:
    """Each observer learns the name of the tensor it observes, for the core's warnings (FX
    shares one observer among a max pool, a flatten and their input: all names are given)."""
    names: dict[int, list[str]] = {}
    for key, observer in prepared.observers.items():
        names.setdefault(id(observer), []).append(key)
    for observer in prepared.observers.values():
        observer.observer.name = " = ".join(names[id(observer)])
    return prepared


def _prepare_fx(
    model: nn.Module,
    plan: QuantPlan,
    settings: Settings,
    example_inputs: tuple[Any, ...],
    qat: bool,
) -> Prepared:
    _traceable_flattens(model)
    _float_prelus(model)
    model, copies = _own_call_sites(model, plan)
    mapping = static_mapping(plan, settings, qat=qat, copies=copies)
    with quiet():
        if qat:
            gm = prepare_qat_fx(
                model.train(), mapping, example_inputs, backend_config=backend_config(settings)
            )
        else:
            gm = prepare_fx(
                model.eval(), mapping, example_inputs, backend_config=backend_config(settings)
            )
    _check_observed(gm, plan)
    observers = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, IncActivationObserver):
                observers[node.args[0].name] = module
    return Prepared(gm, "fx", observers)


def _own_call_sites(model: nn.Module, plan: QuantPlan) -> tuple[nn.Module, dict[str, str]]:
    """``model``, or a GraphModule in which every further call of a static op called more than
    once per forward (``self.a(self.a(x))``, or one module under two names) calls a copy of it
    (``a_call2``, ...), so each call gets its own output range; and copy name -> op name.

    torch's FX lowering gives one quantized module one output scale: both calls used the range
    of all calls together (a 4x range difference gave 2.2% logit error instead of 1.7%).
    """
    static = {
        id(_ops.submodule(model, name)): name
        for name, op in plan.ops.items()
        if op.approach == "static"
    }
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # prepare_fx will say why it cannot trace either
        return model, {}
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            op = static.get(id(gm.get_submodule(node.target)))
            if op is not None:
                calls.setdefault(op, []).append(node)
    copies: dict[str, str] = {}
    for op, nodes in calls.items():
        for k, node in enumerate(nodes[1:], start=2):
            name = f"{op}_call{k}"
            gm.add_submodule(name, copy.deepcopy(_ops.submodule(model, op)))
            node.target = name
            copies[name] = op
    if not copies:
        return model, {}
    gm.recompile()
    log.info("calls of shared modules get their own copies: %s", copies)
    return gm, copies


class _NotQuantizedByFx(Exception):
    pass


def _check_observed(gm: nn.Module, plan: QuantPlan) -> None:
    """FX silently leaves an op float when its backend config rejects the qconfig (e.g. int8
    activations on oneDNN); raising here sends the model down the eager path instead."""
    observed_inputs = set()
    for node in gm.graph.nodes:  # type: ignore[union-attr]
        if node.op != "call_module":
            continue
        for arg in node.args:
            target = getattr(arg, "target", None)
            if getattr(arg, "op", None) == "call_module" and isinstance(
                gm.get_submodule(target), (IncActivationObserver, FakeQuantizeBase)
            ):
                observed_inputs.add(node.target)
    missing = [
        n for n, op in plan.ops.items() if op.approach == "static" and n not in observed_inputs
    ]
    if missing:
        raise _NotQuantizedByFx(
            f"torch's FX backend config does not quantize {', '.join(missing)} as planned"
        )


def _called_more_than_once(
    model: nn.Module, names: list[str], example_inputs: tuple[Any, ...]
) -> dict[str, int]:
    """op name -> calls per forward on ``example_inputs``, for the ops called more than once."""
    if not example_inputs:
        return {}
    counts = dict.fromkeys(names, 0)
    hooks = []
    for name in names:

        def count(*_: Any, name: str = name) -> None:
            counts[name] += 1

        hooks.append(_ops.submodule(model, name).register_forward_pre_hook(count))
    try:
        with torch.no_grad():
            call(model, example_inputs)
    except Exception:  # calibration will report a model that does not run
        return {}
    finally:
        for hook in hooks:
            hook.remove()
    return {name: n for name, n in counts.items() if n > 1}


def _prepare_eager(
    model: nn.Module,
    plan: QuantPlan,
    settings: Settings,
    qat: bool,
    example_inputs: tuple[Any, ...] = (),
) -> Prepared:
    build = qat_qconfig if qat else static_qconfig
    static = [name for name, op in plan.ops.items() if op.approach == "static"]
    # eager mode wraps a module, not a call: every call of a module called twice would share
    # one input and one output range (and a module under two names would run int8 kernels on
    # float input), so such modules stay fp32
    shared = _called_more_than_once(model, static, example_inputs)
    if shared:
        listed = ", ".join(f"{name!r} ({n} calls)" for name, n in shared.items())
        message = (
            f"{type(model).__name__} calls {listed} more than once per forward; FX cannot trace "
            "the model and eager mode gives a module one range for all its calls, so "
            "these stay fp32 (give each call its own module to quantize them)"
        )
        log.warning("%s", message)
        warnings.warn(message, UserWarning, stacklevel=2)
    for name, op in plan.ops.items():
        if op.approach != "static" or name in shared:
            continue
        wrapper = QuantWrapper(_ops.submodule(model, name))
        wrapper.qconfig = build(op, settings)  # type: ignore[assignment]
        _ops.set_submodule(model, name, wrapper)
    with quiet():
        if qat:
            eager_prepare_qat(model.train(), inplace=True)
        else:
            eager_prepare(model.eval(), inplace=True)
    observers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, IncActivationObserver)
    }
    return Prepared(model, "eager", observers)


@torch.no_grad()
def calibrate(prepared: Prepared, batches: Iterable[Any]) -> TensorRanges:
    """Run ``batches`` through the prepared model; the ranges each observer saw."""
    prepared.model.eval()
    for batch in batches:
        call(prepared.model, batch)
    return {key: obs.range() for key, obs in prepared.observers.items() if obs.observed}


def seed(prepared: Prepared, ranges: TensorRanges) -> None:
    """Give every observer its calibrated range; an op the data never reached is an error."""
    for key, observer in prepared.observers.items():
        if key not in ranges:
            raise ModelError(
                f"no calibrated range for tensor {key!r}: the calibration data never reached it "
                "(check that calib_dataloader exercises every quantized module)"
            )
        observer.seed(ranges[key])


def convert(prepared: Prepared, settings: Settings) -> nn.Module:
    """The int8 model (observers replaced by quantize/dequantize, modules by quantized ones)."""
    with quiet():
        if prepared.mode == "fx":
            return convert_fx(prepared.model.eval(), backend_config=backend_config(settings))  # type: ignore[arg-type]
        return eager_convert(prepared.model.eval(), inplace=True)
