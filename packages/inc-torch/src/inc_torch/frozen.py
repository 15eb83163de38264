"""Run an int8 FX ``GraphModule`` through a frozen TorchScript copy of itself.

A converted FX model is plain Python: every call walks ``forward`` and each quantized module's
``__call__``, which costs as much as the int8 kernels on a small model (the digits CNN: about
a quarter of its time). ``enable`` puts a callable on the instance's ``forward`` that, for
inference calls (no grad, eval mode, tensors only), runs ``torch.jit.freeze(torch.jit.trace(...))``
of the same module instead: one C++ call, packed weights folded in as constants.

The module itself stays what it was (``named_modules``, ``state_dict``, scales and zero
points, save/load), so everything that inspects it is unaffected. A trace is made per input
signature (shapes, dtypes, devices), so nothing specialised to one shape is reused for
another; ``load_state_dict`` and ``.to()``/``.cpu()``/... drop the traces (they froze the
old weights). Anything that does not trace, or a call with keyword or non-tensor arguments,
runs the Python graph as before.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from inc_core.errors import ModelError

log = logging.getLogger(__name__)

#: traces kept per model; further input signatures run the Python graph
MAX_SIGNATURES = 8


class FrozenForward:
    """The instance ``forward`` of a GraphModule: a frozen trace per input signature."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.graph_forward = type(module).forward.__get__(module)
        #: input signature -> the frozen trace's ``forward`` (called directly: a ScriptModule's
        #: own ``__call__`` adds a hook dispatch: 3 us, 7% of a batch-1 digits CNN call)
        self.traces: dict[tuple[Any, ...], Any] = {}
        self.error: str = ""

    def clear(self) -> None:
        self.traces.clear()

    def apply(self, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
        """``Module._apply`` (``.to()``, ``.float()``, ...): the traces froze the old tensors."""
        self.clear()
        return type(self.module)._apply(self.module, fn, *args, **kwargs)

    def load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        """``Module._load_from_state_dict``: new weights, so the traces are stale."""
        self.clear()
        type(self.module)._load_from_state_dict(self.module, *args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenForward:
        # GraphModule's deepcopy copies its __dict__ and then discards what the graph does not
        # use (this included): hand it an empty one rather than copying the traces
        blank = FrozenForward.__new__(FrozenForward)
        blank.module, blank.graph_forward, blank.traces, blank.error = None, None, {}, "a copy"
        return blank

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if (
            kwargs
            or self.error
            or self.module.training
            or torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or not args
        ):
            return self.graph_forward(*args, **kwargs)
        signature = []
        for a in args:
            if not isinstance(a, torch.Tensor):
                return self.graph_forward(*args)
            signature.append((a.shape, a.dtype, a.device))
        key = tuple(signature)
        trace = self.traces.get(key)
        if trace is None:
            if len(self.traces) >= MAX_SIGNATURES:
                return self.graph_forward(*args)
            trace = self._trace(args)
            if trace is None:
                return self.graph_forward(*args)
            self.traces[key] = trace
        return trace(*args)

    def _trace(self, args: tuple[torch.Tensor, ...]) -> Any:
        """The frozen trace's ``forward`` for ``args``' signature, or None (and ``error``)."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(self.module, args, check_trace=False, strict=False)
                trace = torch.jit.freeze(traced.eval())
                # a trace returns tuples for namedtuples, may differ in container types, ...:
                # it is used only where it returns exactly what the graph returns
                if not _same(trace(*args), self.graph_forward(*args)):
                    raise ModelError("the frozen trace's output differs from the FX graph's")
            return trace.forward
        except Exception as exc:  # the Python graph always works: keep using it
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            log.info("int8 model runs as Python FX graph (no frozen trace): %s", self.error)
            return None


def enable(module: nn.Module) -> nn.Module:
    """Give an FX ``GraphModule`` the frozen-trace ``forward``; other modules are returned as is."""
    if not isinstance(module, torch.fx.GraphModule):
        return module
    fast = FrozenForward(module)
    # instance attributes win over the class's methods. A deepcopy of a GraphModule rebuilds
    # it from its graph without them: the copy runs the Python graph (build.quantize and
    # qat.convert enable it on what they return)
    object.__setattr__(module, "forward", fast)
    object.__setattr__(module, "_apply", fast.apply)
    object.__setattr__(module, "_load_from_state_dict", fast.load_from_state_dict)
    return module


def _same(got: Any, want: Any) -> bool:
    """Same structure, types and values (tensors compared exactly)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, torch.Tensor):
        equal: bool = got.shape == want.shape and got.dtype == want.dtype and torch.equal(got, want)
        return equal
    if isinstance(want, (tuple, list)):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    return bool(got == want)


def of(module: nn.Module) -> FrozenForward | None:
    """The module's frozen-trace forward, if ``enable`` gave it one."""
    fast = module.__dict__.get("forward")
    return fast if isinstance(fast, FrozenForward) else None


@contextlib.contextmanager
def python_graph(module: nn.Module) -> Iterator[None]:
    """Calls of ``module`` run its Python graph inside the block (so forward hooks on its
    submodules fire); the frozen-trace ``forward`` is back afterwards, at no cost per call."""
    fast = of(module)
    if fast is None:
        yield
        return
    object.__setattr__(module, "forward", fast.graph_forward)
    try:
        yield
    finally:
        object.__setattr__(module, "forward", fast)
