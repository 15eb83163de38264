"""Int8 activations stay channels-last through ``flatten -> Linear``.

torch's int8 convolutions and pools return channels-last tensors, so ``torch.flatten(x, 1)``
in NCHW order is a copy: on the digits CNN, a tenth of the int8 model's time. Flattening in
NHWC order is a view instead, and the Linear that follows reads the same numbers once its
weight columns are permuted alike: each int32 sum has the same terms in another order, so the
outputs are bit-identical.

The rewrite needs the (C, H, W) shape each such flatten sees: measured on the example inputs
when quantizing, kept in the model's info (``QuantInfo.layout``) and reused when loading.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn
from torch.ao.nn import quantized as nnq
from torch.fx.passes.shape_prop import ShapeProp

from inc_core.errors import ModelError


class ChannelsLastFlatten(nn.Module):
    """``torch.flatten(x, 1)`` in NHWC order, for a Linear whose columns are in that order."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ModelError(
                f"this int8 model flattens {self.shape} (C, H, W) maps before a Linear, as in its "
                f"calibration data; got {tuple(x.shape[1:])}"
            )
        return x.permute(0, 2, 3, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def lay_out(
    model: nn.Module, example_inputs: tuple[Any, ...] | None, known: dict[str, list[int]] | None
) -> dict[str, list[int]]:
    """Rewrite an int8 FX model's flattens: ``known`` ones (a saved model's), else those found
    on ``example_inputs``. Returns what was applied ({} for eager models)."""
    if not isinstance(model, fx.GraphModule):
        return {}
    shapes = known if known is not None else find(model, example_inputs) if example_inputs else {}
    apply(model, shapes)
    return shapes


def find(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> dict[str, list[int]]:
    """Flatten node name -> [C, H, W], for each ``flatten(x, 1)`` of a 4-D int8 tensor whose
    only user is a static int8 Linear (one run of ``gm`` on ``example_inputs``)."""
    names = {node.name for node in gm.graph.nodes if _linear_after_flatten(gm, node) is not None}
    if not names:
        return {}
    # on a copy: torch's oneDNN int8 conv keeps its kernel for the first input shape its packed
    # weights see, and the model's first call should be the user's, not this batch's
    probe = copy.deepcopy(gm)
    with torch.no_grad():
        ShapeProp(probe).propagate(*example_inputs)
    found = {}
    for node in probe.graph.nodes:
        if node.name not in names:
            continue
        meta = node.args[0].meta.get("tensor_meta")
        if meta is not None and len(meta.shape) == 4 and meta.dtype == torch.quint8:
            found[node.name] = [int(d) for d in meta.shape[1:]]
    return found


def apply(gm: fx.GraphModule, shapes: dict[str, list[int]]) -> None:
    """Rewrite ``gm`` (in place; under the engine its weights are packed with) for ``shapes``."""
    if not shapes:
        return
    for node in list(gm.graph.nodes):
        if node.name not in shapes:
            continue
        linear = _linear_after_flatten(gm, node)
        if linear is None:
            raise ModelError(f"no flatten -> int8 Linear at {node.name!r} to lay out channels-last")
        c, h, w = shapes[node.name]
        _permute_columns(linear, torch.arange(c * h * w).reshape(c, h, w).permute(1, 2, 0))
        name = f"{node.name}_channels_last"
        gm.add_submodule(name, ChannelsLastFlatten((c, h, w)))
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _linear_after_flatten(gm: fx.GraphModule, node: fx.Node) -> nnq.Linear | None:
    if node.op != "call_function" or node.target is not torch.flatten:
        return None
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    users = list(node.users)
    if (start, end) != (1, -1) or len(users) != 1 or users[0].op != "call_module":
        return None
    module = gm.get_submodule(str(users[0].target))
    return module if isinstance(module, nnq.Linear) else None


def _permute_columns(linear: nnq.Linear, order: torch.Tensor) -> None:
    weight, bias = linear.weight(), linear.bias()
    columns = order.reshape(-1)
    values = weight.int_repr()[:, columns].contiguous()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        permuted = torch._make_per_channel_quantized_tensor(
            values, weight.q_per_channel_scales(), weight.q_per_channel_zero_points(), 0
        )
    else:
        permuted = torch._make_per_tensor_quantized_tensor(
            values, weight.q_scale(), weight.q_zero_point()
        )
    linear.set_weight_bias(permuted, bias)
