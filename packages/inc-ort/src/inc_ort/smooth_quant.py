"""SmoothQuant (Xiao et al.): move activation outliers into the weights of MatMul/Gemm.

For an activation X feeding weights W (input channel j): ``s_j = max|X_j|^a / max|W_j|^(1-a)``;
the graph computes ``(X / s) @ (s * W)``, the same product, with a flatter X that quantizes
better. ``1/s`` is folded into the op that produces X when that is exact (LayerNormalization;
Relu after a Gemm/MatMul/Conv), otherwise a Mul is inserted. ``alpha="auto"`` searches, per
activation, the alpha whose fake-quantized product (inc_core.scheme) is closest to fp32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from inc_core import scheme
from inc_core.errors import ConfigError
from inc_core.space import TensorRange, TensorRanges

from . import graph
from ._runtime import onnx
from .calibrate import run_batches

SCALE_PREFIX = "inc.smooth:"
ALPHA_PREFIX = "inc.smooth_alpha:"
AUTO_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
_MAX_ROWS = 2048


def _targets(model: onnx.ModelProto, op_types: Iterable[str]) -> dict[str, list[onnx.NodeProto]]:
    """activation tensor -> the MatMul/Gemm nodes with a 2-D constant weight that read it."""
    consts = graph.constants(model)
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type not in op_types or node.input[0] in consts:
            continue
        weight = graph.weight_input(node, consts)
        if weight is None or weight not in inits or len(inits[weight].dims) != 2:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        groups.setdefault(node.input[0], []).append(node)
    return groups


def _weight_rows(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The weight as (K input channels, N outputs)."""
    w: np.ndarray = onnx.numpy_helper.to_array(graph.initializer(model, node.input[1])).astype(
        np.float64
    )
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return w.T if trans_b else w


def _scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(x_max, 1e-8), alpha) / np.power(np.maximum(w_max, 1e-8), 1 - alpha)
    s = np.where(x_max > 0, s, 1.0)
    return np.clip(s, 1e-4, 1e4)


def _fq_loss(
    x: np.ndarray, weights: list[np.ndarray], refs: list[np.ndarray], s: np.ndarray
) -> float:
    """Mean squared error of the fake-quantized smoothed products against the fp32 ``refs``."""
    xs = x / s
    act = scheme.fake_quantize(
        xs, scheme.compute_qparams(xs.min(), xs.max(), dtype="uint8", scheme="asym")
    ).astype(np.float32)  # float32 products: the search ranks alphas, 1e-7 relative is plenty
    loss = 0.0
    for w, ref in zip(weights, refs, strict=True):
        ws = w * s[:, None]
        wq = scheme.fake_quantize(ws, scheme.weight_qparams(ws, granularity="per_channel", axis=1))
        loss += float(np.mean((act @ wq.astype(np.float32) - ref) ** 2))
    return loss


def compute(model: onnx.ModelProto, data: list[Any], args: Mapping[str, Any]) -> TensorRanges:
    """Scales (and alphas) per smoothed activation, as ``TensorRanges`` entries."""
    alpha = args.get("alpha", 0.5)
    op_types = tuple(args.get("op_types", ("MatMul", "Gemm")))
    unknown = [t for t in op_types if t not in ("MatMul", "Gemm")]
    if unknown:
        raise ConfigError(
            f"smooth_quant_args['op_types'] {unknown}: inc-ort smooths MatMul and Gemm"
        )
    groups = _targets(model, op_types)
    if not groups:
        return {}
    x_max: dict[str, np.ndarray] = {}
    rows: dict[str, list[np.ndarray]] = {}
    auto = alpha == "auto" or isinstance(alpha, (list, tuple))

    def visit(name: str, value: np.ndarray) -> None:
        flat = np.abs(value.reshape(-1, value.shape[-1]).astype(np.float64))
        x_max[name] = np.maximum(x_max.get(name, 0), flat.max(0))
        if auto and sum(len(r) for r in rows.get(name, [])) < _MAX_ROWS:
            rows.setdefault(name, []).append(
                value.reshape(-1, value.shape[-1])[:_MAX_ROWS].astype(np.float64)
            )

    run_batches(model, data, list(groups), visit)
    grid = AUTO_GRID if alpha == "auto" else tuple(alpha) if auto else (float(alpha),)
    out: TensorRanges = {}
    for tensor, nodes in groups.items():
        weights = [_weight_rows(model, n) for n in nodes]
        w_max = np.max([np.abs(w).max(1) for w in weights], axis=0)
        if len(grid) == 1:
            best = grid[0]
        else:
            x = np.concatenate(rows[tensor])[:_MAX_ROWS]
            # the fp32 products do not depend on alpha: computed once, not once per candidate
            refs = [(x.astype(np.float32) @ w.astype(np.float32)) for w in weights]
            best = min(
                grid, key=lambda a: _fq_loss(x, weights, refs, _scales(x_max[tensor], w_max, a))
            )
        s = _scales(x_max[tensor], w_max, best)
        out[SCALE_PREFIX + tensor] = TensorRange.of(s, s)
        out[ALPHA_PREFIX + tensor] = TensorRange.of(best, best)
    return out


def alphas(ranges: TensorRanges) -> dict[str, float]:
    """activation tensor -> alpha used (from ``compute``'s entries)."""
    return {
        k[len(ALPHA_PREFIX) :]: float(v.min)
        for k, v in ranges.items()
        if k.startswith(ALPHA_PREFIX)
    }


def apply(model: onnx.ModelProto, ranges: TensorRanges, folding: bool = True) -> onnx.ModelProto:
    """The smoothed fp32 model: same function, scales moved from activations into weights."""
    entries = {
        k[len(SCALE_PREFIX) :]: np.asarray(v.min)
        for k, v in ranges.items()
        if k.startswith(SCALE_PREFIX)
    }
    if not entries:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    groups = _targets(out, ("MatMul", "Gemm"))
    inits = {i.name: i for i in out.graph.initializer}
    consumers = graph.consumers_of(out)
    producers = {o: n for n in out.graph.node for o in n.output}
    outputs = {o.name for o in out.graph.output}
    new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []

    def set_init(name: str, values: np.ndarray) -> None:
        inits[name].CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), name))

    for tensor, s in entries.items():
        nodes = groups.get(tensor, [])
        if not nodes:
            continue
        for node in nodes:  # weights absorb s on their input channels
            w = onnx.numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            trans_b = node.op_type == "Gemm" and any(
                a.name == "transB" and a.i for a in node.attribute
            )
            set_init(node.input[1], w * s[None, :] if trans_b else w * s[:, None])
        only_targets = len(consumers.get(tensor, [])) == len(nodes) and tensor not in outputs
        if folding and only_targets and _fold(tensor, s, producers, consumers, inits, set_init):
            continue
        mul_name = f"{tensor}/smooth_quant_mul"
        inv = f"{tensor}/smooth_quant_inv_scale"
        out.graph.initializer.append(
            onnx.numpy_helper.from_array((1.0 / s).astype(np.float32), inv)
        )
        smoothed = f"{tensor}/smoothed"
        mul = onnx.helper.make_node("Mul", [tensor, inv], [smoothed], name=mul_name)
        for node in nodes:
            node.input[0] = smoothed
        new_nodes.append((nodes[0], mul))
    for before, mul in new_nodes:  # keep the graph topologically sorted
        index = list(out.graph.node).index(before)
        out.graph.node.insert(index, mul)
    return out


def _fold(tensor, s, producers, consumers, inits, set_init) -> bool:  # type: ignore[no-untyped-def]
    """Divide the producer of ``tensor`` by ``s`` when that is exact; True when done."""
    node = producers.get(tensor)
    if node is None:
        return False

    def own(name: str) -> bool:  # an initializer only this pattern reads: safe to rescale
        return name in inits and len(consumers.get(name, [])) == 1

    if (
        node.op_type == "LayerNormalization"
        and len(node.input) >= 3
        and all(own(i) for i in node.input[1:3])
    ):
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if axis != -1:
            return False
        for name in node.input[1:3]:
            set_init(name, onnx.numpy_helper.to_array(inits[name]).astype(np.float64) / s)
        return True
    if node.op_type == "Add":
        return _fold_affine_tail(node, s, producers, consumers, inits, set_init, own)
    if node.op_type == "Relu" and len(consumers.get(node.input[0], [])) == 1:
        # relu(z) / s == relu(z / s) for s > 0: scale the output channels of z's producer
        prev = producers.get(node.input[0])
        if prev is None or prev.op_type not in ("Gemm", "MatMul") or prev.input[1] not in inits:
            return False
        if prev.op_type == "Gemm" and any(a.name == "transA" and a.i for a in prev.attribute):
            return False
        trans_b = prev.op_type == "Gemm" and any(a.name == "transB" and a.i for a in prev.attribute)
        w = onnx.numpy_helper.to_array(inits[prev.input[1]]).astype(np.float64)
        if w.ndim != 2:
            return False
        set_init(prev.input[1], w / s[:, None] if trans_b else w / s[None, :])
        if prev.op_type == "Gemm" and len(prev.input) > 2 and prev.input[2] in inits:
            set_init(
                prev.input[2],
                onnx.numpy_helper.to_array(inits[prev.input[2]]).astype(np.float64) / s,
            )
        elif prev.op_type == "MatMul":
            return True
        return True
    return False


def _fold_affine_tail(node, s, producers, consumers, inits, set_init, own) -> bool:  # type: ignore[no-untyped-def]
    """``Add(Mul(y, gamma), beta)`` with per-channel constants: the tail of a LayerNorm that
    torch.onnx (opset < 17) and tf2onnx write decomposed. ``(y * g + b) / s`` is exactly
    ``y * (g / s) + b / s``, so 1/s folds into gamma and beta as into a fused LayerNorm."""
    beta = next((i for i in node.input if i in inits), None)
    scaled = next((i for i in node.input if i not in inits), None)
    mul = producers.get(scaled) if scaled is not None else None
    if beta is None or mul is None or mul.op_type != "Mul" or len(consumers.get(scaled, [])) != 1:
        return False
    gamma = next((i for i in mul.input if i in inits), None)
    if gamma is None or all(i in inits for i in mul.input):
        return False
    channels = s.shape[-1]
    for name in (gamma, beta):
        dims = list(inits[name].dims)
        # the constant must broadcast along the last axis only ([C] or a scalar), and be ours
        if (
            not own(name)
            or int(np.prod(dims)) not in (1, channels)
            or any(d != 1 for d in dims[:-1])
        ):
            return False
    for name in (gamma, beta):
        value = onnx.numpy_helper.to_array(inits[name]).astype(np.float64).reshape(-1)
        set_init(name, value / s)
    return True
