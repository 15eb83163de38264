"""Where an op's output is read for per-op diagnosis: after what torch's FX fuses into it.

FX fuses a Conv/Linear with the BatchNorm and ReLU after it (``Conv+BN+ReLU`` becomes one
int8 ``QuantizedConvReLU2d`` named like the conv), so an int8 FX model's op outputs are the
fused outputs. The fp32 op outputs must be the same ones to be compared: they are read from
an ``fuse_fx`` copy of the fp32 model (``fused``). Int8 models that are not FX graphs (eager,
dynamic) keep the BatchNorm/ReLU as separate float modules or calls: ``tails`` says, per op,
which of them to apply to the op's own output to get the fused one.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.quantization.quantize_fx import fuse_fx

from . import static

log = logging.getLogger(__name__)

#: a tail step that is a function, not a module: the name under which ``apply_tail`` runs it
RELU = "relu()"
_RELU_CALLS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


def fused(model: nn.Module, qengine: str) -> fx.GraphModule | None:
    """A copy of fp32 ``model`` with FX's fusions for ``qengine``; None when FX cannot trace it."""
    try:
        with static.quiet():
            return fuse_fx(
                copy.deepcopy(model).eval(), backend_config=static.engine_config(qengine)
            )
    except Exception as exc:  # untraceable models are not fused by inc either (eager mode)
        log.debug("no FX fusion for per-op outputs of %s: %s", type(model).__name__, exc)
        return None


def tails(model: nn.Module, ops: list[str], qengine: str) -> dict[str, list[str] | None]:
    """Op -> what FX fuses after it in fp32 ``model``, in order: module names, or ``RELU``.

    Ops with nothing fused are left out; None: something fused that ``apply_tail`` cannot
    replay (e.g. oneDNN's Conv+Add), so the op's fused output cannot be read unfused.
    """
    fused_model = fused(model, qengine)
    if fused_model is None:
        return {}
    # fuse_fx keeps node names and drops the nodes it fuses into the op's node
    kept = {node.name for node in fused_model.graph.nodes}
    wanted = set(ops)
    graph = _trace(model)
    if graph is None:
        return {}
    found: dict[str, list[str] | None] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted or node.name not in kept:
            continue
        steps: list[str] | None = []
        current = node
        while len(current.users) == 1:
            nxt = next(iter(current.users))
            if nxt.name in kept:
                break
            step = _step(nxt)
            if step is None or steps is None:
                steps = None
            else:
                steps.append(step)
            current = nxt
        if steps != []:
            found[str(node.target)] = steps
    return found


def apply_tail(model: nn.Module, tail: list[str], output: torch.Tensor) -> torch.Tensor:
    """``output`` through the fused steps ``tail`` (float modules of ``model``, or ReLU)."""
    for step in tail:
        output = torch.relu(output) if step == RELU else model.get_submodule(step)(output)
    return output


def _trace(model: nn.Module) -> fx.Graph | None:
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    try:
        return QuantizationTracer([], []).trace(model)
    except Exception:
        return None


def _step(node: fx.Node) -> str | None:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_function" and node.target in _RELU_CALLS:
        return RELU
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return RELU
    return None
