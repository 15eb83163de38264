"""Where SmoothQuant's ``X / s`` can be folded into the op that produces ``X``.

Dividing a Linear's input by ``s`` is exact anywhere as a multiply right before the quantizer
(``smooth_quant.install``). Folded into the producer of ``X`` instead (a LayerNorm's or
RMSNorm's weight and bias, or a Linear's output rows), it costs nothing at run time, but it is
correct only when nothing else reads that output: every consumer must be a smoothed Linear,
and all of them then share one ``s``. BERT's post-LayerNorm also feeds the residual, so
nothing folds there; pre-norm blocks (Llama, GPT-NeoX, Bloom) fold the Q/K/V inputs and the
MLP's input.

The consumers are read from autograd on one calibration batch: run with every parameter
requiring grad, the graph from the outputs backwards names every op that used each tensor.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import _ops
from ._data import call

#: nodes inside one Linear (views, matmul, bias add, transposed weight): more means the
#: walk left the Linear, and the fold is not attempted
_MAX_LINEAR_NODES = 32


@dataclass(frozen=True)
class Fold:
    """``linears`` read only ``absorber``'s output: ``1/s`` goes into the absorber."""

    absorber: str
    linears: tuple[str, ...]


def is_absorber(module: nn.Module) -> bool:
    """Modules whose output channels can take a per-channel ``1/s``: Linear, and norms with a
    per-channel affine weight (torch's LayerNorm/RMSNorm and the models' own, by name)."""
    if isinstance(module, nn.Linear):
        return True
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return (
        name.endswith(("LayerNorm", "RMSNorm"))
        and isinstance(weight, torch.Tensor)
        and weight.dim() == 1
    )


def find(model: nn.Module, linears: Sequence[str], batch: Any) -> list[Fold]:
    """The folds possible in ``model`` (a copy the caller owns) for the smoothed ``linears``.

    Only modules that ran once on ``batch`` fold (a module called twice could feed anything
    the second time), only when the absorber's output is not itself a model output, and only
    when scaling the absorber's parameters scales its output channels (checked on the batch:
    a norm computing ``x * (1 + weight)`` does not fold).
    """
    absorbers = {name: m for name, m in model.named_modules() if name and is_absorber(m)}
    calls: dict[str, int] = {}
    output_of: dict[int, str] = {}  # id(autograd node) -> the absorber that made the tensor
    output_node: dict[str, Any] = {}
    input_of: dict[str, Any] = {}
    samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record_output(name: str) -> Any:
        def hook(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                output_of[id(output.grad_fn)] = name
                output_node[name] = output.grad_fn
                if inputs and isinstance(inputs[0], torch.Tensor):
                    samples[name] = (inputs[0].detach(), output.detach())

        return hook

    def record_input(name: str) -> Any:
        def hook(_m: nn.Module, inputs: tuple[Any, ...]) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].grad_fn is not None:
                input_of[name] = inputs[0].grad_fn

        return hook

    handles = [m.register_forward_hook(record_output(n)) for n, m in absorbers.items()]
    handles += [
        _ops.submodule(model, n).register_forward_pre_hook(record_input(n)) for n in linears
    ]
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in grads:
            p.requires_grad_(True)
        with torch.enable_grad():
            # ``outputs`` keeps the graph, so the node ids stay valid until we return
            outputs = call(model, batch)
            roots = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
            consumers = _consumers(roots)
    finally:
        for handle in handles:
            handle.remove()
        for p, required in grads.items():
            p.requires_grad_(required)

    returned = {id(node) for node in roots}
    groups: dict[int, list[str]] = {}
    for name in linears:
        node = input_of.get(name)
        if node is not None and calls.get(name) == 1 and id(node) in output_of:
            groups.setdefault(id(node), []).append(name)
    folds = []
    for node_id, members in groups.items():
        absorber = output_of[node_id]
        if calls.get(absorber) != 1 or node_id in returned or absorber not in samples:
            continue
        inside: set[int] = set()
        for name in members:
            nodes = _nodes_back_to(output_node[name], node_id)
            if nodes is None:
                break
            inside |= nodes
        else:
            if consumers.get(node_id, set()) <= inside and _scales_channels(
                absorbers[absorber], *samples[absorber]
            ):
                folds.append(Fold(absorber, tuple(members)))
    return folds


def _scales_channels(absorber: nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``fold`` with some 1/s makes ``absorber`` output ``y * (1/s)`` on ``x``."""
    trial = copy.deepcopy(absorber)
    inverse = torch.linspace(0.5, 2.0, y.shape[-1])
    fold(trial, inverse)
    with torch.no_grad():
        got = trial(x)
    want = y * inverse.to(y.dtype)
    return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())))


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model output (tensors, tuples, lists, dicts, HF ModelOutputs)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _consumers(roots: Iterable[Any]) -> dict[int, set[int]]:
    """id(node) -> ids of the nodes that consumed its output, over the whole graph."""
    consumers: dict[int, set[int]] = {}
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for child, _ in node.next_functions:
            if child is not None:
                consumers.setdefault(id(child), set()).add(id(node))
                stack.append(child)
    return consumers


def _nodes_back_to(output: Any, stop: int) -> set[int] | None:
    """The nodes between a Linear's output and its input's producer ``stop`` (excluded), or
    None when the walk grows past one Linear's worth of nodes."""
    found: set[int] = set()
    queue = deque([output])
    while queue:
        node = queue.popleft()
        if id(node) == stop or id(node) in found:
            continue
        found.add(id(node))
        if len(found) > _MAX_LINEAR_NODES:
            return None
        queue.extend(child for child, _ in node.next_functions if child is not None)
    return found


def fold(absorber: nn.Module, inverse: torch.Tensor) -> None:
    """Multiply ``absorber``'s output channels by ``inverse`` (= 1/s), in place."""
    with torch.no_grad():
        if isinstance(absorber, nn.Linear):
            absorber.weight.mul_(inverse.to(absorber.weight.dtype)[:, None])
        else:
            absorber.weight.mul_(inverse.to(absorber.weight.dtype))
        bias = getattr(absorber, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.mul_(inverse.to(bias.dtype))
