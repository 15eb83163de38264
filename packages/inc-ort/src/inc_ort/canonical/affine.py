"""Fold per-channel affine chains into the weighted op before them.

``Conv -> [Transpose] -> Mul(k) -> Add(b)`` (tf2onnx's batch norm), ``Conv -> Mul(s) -> Add(b)``
(paddle2onnx's learnable affine), ``BatchNormalization``, ``Sub``/``Div`` variants: every step
``y -> y*s + t`` with ``s``, ``t`` constant along the output-channel axis only. The chain becomes
``Conv(W*s, B*s + t) -> [Transpose]``; for a MatMul (no bias input) ``t`` stays as one Add.
The weighted op keeps its name; folding is done in float64 and is exact to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._runtime import onnx
from ._graph import Graph, Outcome, attrs, label, set_attr

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
AFFINE = ("Mul", "Add", "Sub", "Div", "BatchNormalization")


@dataclass
class _Chain:
    """The affine ops after one weighted op: y -> y*scale + shift, then the transposes."""

    scale: np.ndarray
    shift: np.ndarray
    ops: list[onnx.NodeProto] = field(default_factory=list)
    transposes: list[onnx.NodeProto] = field(default_factory=list)
    last: str = ""  # the tensor the chain ends in (its name must survive)


def _channel_vector(k: np.ndarray, axis: int, rank: int | None, channels: int) -> np.ndarray | None:
    """``k`` as a per-channel vector when it broadcasts along ``axis`` only, else None."""
    if k.dtype not in (np.float32, np.float64):
        return None
    if rank is None:  # only the last axis is known (MatMul of unknown rank)
        if k.ndim > 1 or axis != -1:
            return None
        vec = k.reshape(-1)
    else:
        if k.ndim > rank:
            return None
        pos = axis - (rank - k.ndim)  # axis in k's own (right-aligned) dimensions
        for d, size in enumerate(k.shape):
            if d != pos and size != 1:
                return None
        vec = k.reshape(-1)
    if vec.size == 1:
        return np.full(channels, vec[0], dtype=np.float64)
    return vec.astype(np.float64) if vec.size == channels else None


def _out_channels(g: Graph, node: onnx.NodeProto) -> tuple[int, int, int | None] | None:
    """(channels, channel axis, output rank or None) of a weighted op with constant weights."""
    w = g.const(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.dtype not in (np.float32, np.float64):
        return None
    a = attrs(node)
    if node.op_type == "Conv" and w.ndim >= 3:
        return w.shape[0], 1, w.ndim
    if node.op_type == "ConvTranspose" and w.ndim >= 3:
        return w.shape[1] * int(a.get("group", 1)), 1, w.ndim
    if node.op_type == "Gemm" and w.ndim == 2:
        if len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
            return None
        return (w.shape[0] if a.get("transB", 0) else w.shape[1]), 1, 2
    if node.op_type == "MatMul" and w.ndim == 2:
        rank = g.rank(node.output[0])
        return w.shape[1], (rank - 1 if rank else -1), rank
    return None


def _follow(g: Graph, node: onnx.NodeProto) -> _Chain | None:
    info = _out_channels(g, node)
    if info is None:
        return None
    channels, axis, rank = info
    chain = _Chain(np.ones(channels), np.zeros(channels), last=node.output[0])
    pending: list[onnx.NodeProto] = []  # transposes not yet followed by an affine op
    tensor = node.output[0]
    while True:
        nxt = g.sole_consumer(tensor)
        if nxt is None or nxt.domain not in ("", "ai.onnx") or len(nxt.output) != 1:
            break
        if nxt.op_type == "Transpose" and rank is not None:
            perm = list(attrs(nxt).get("perm") or range(rank - 1, -1, -1))  # type: ignore[call-overload]
            if len(perm) != rank:
                break
            axis = perm.index(axis)
            pending.append(nxt)
            tensor = nxt.output[0]
            continue
        step = _affine_step(g, nxt, tensor, axis, rank, channels)
        if step is None:
            break
        s, t = step
        chain.scale, chain.shift = chain.scale * s, chain.shift * s + t
        chain.ops.append(nxt)
        chain.transposes += pending
        pending = []
        chain.last = nxt.output[0]
        tensor = nxt.output[0]
    return chain if chain.ops else None


def _affine_step(
    g: Graph, node: onnx.NodeProto, tensor: str, axis: int, rank: int | None, channels: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with node(y) = y*s + t per channel, or None when the node is not such a step."""
    op = node.op_type
    if op == "BatchNormalization":
        a = attrs(node)
        if node.input[0] != tensor or a.get("training_mode", 0) or axis != 1 or rank is None:
            return None
        params = [g.const(n) for n in node.input[1:5]]
        if any(p is None or p.size != channels for p in params):
            return None
        scale, bias, mean, var = (p.astype(np.float64).reshape(-1) for p in params)  # type: ignore[union-attr]
        s = scale / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        return s, bias - mean * s
    if op not in ("Mul", "Add", "Sub", "Div") or len(node.input) != 2:
        return None
    first = node.input[0] == tensor
    other = node.input[1] if first else node.input[0]
    if other == tensor:
        return None
    k = g.const(other)
    if k is None:
        return None
    vec = _channel_vector(k, axis, rank, channels)
    if vec is None:
        return None
    ones, zeros = np.ones(channels), np.zeros(channels)
    if op == "Mul":
        return vec, zeros
    if op == "Add":
        return ones, vec
    if op == "Sub":
        return (ones, -vec) if first else (-ones, vec)
    if not first or np.any(vec == 0):  # k / y is not affine; y / 0 is not worth keeping exact
        return None
    return 1.0 / vec, zeros


def _fold(g: Graph, node: onnx.NodeProto, chain: _Chain) -> None:
    s, t = chain.scale, chain.shift
    w = g.const(node.input[1])
    assert w is not None
    dtype = w.dtype
    a = attrs(node)
    name = node.name or node.output[0]
    bias_index = 2
    if node.op_type == "Conv":
        w2 = w.astype(np.float64) * s.reshape(-1, *(1,) * (w.ndim - 1))
    elif node.op_type == "ConvTranspose":
        group = int(a.get("group", 1))
        shape = (group, w.shape[0] // group, w.shape[1], *w.shape[2:])
        ws = s.reshape(group, 1, w.shape[1], *(1,) * (w.ndim - 2))
        w2 = (w.astype(np.float64).reshape(shape) * ws).reshape(w.shape)
    elif node.op_type == "Gemm":
        w2 = w.astype(np.float64) * (s[:, None] if a.get("transB", 0) else s[None, :])
    else:  # MatMul
        w2 = w.astype(np.float64) * s[None, :]
    g.set_const(node, 1, w2.astype(dtype), f"{node.input[1]}_folded")
    if node.op_type == "MatMul":
        tail = chain.ops[-1]
        if not np.any(t):
            return _rewire(g, node, chain, None)
        # MatMul has no bias: one Add (the chain's last op, reused: it keeps its name) carries t
        return _rewire(g, node, chain, (tail, t.astype(dtype)))
    if node.op_type == "Gemm":
        beta = float(a.get("beta", 1.0))
        has_c = len(node.input) > 2 and node.input[2]
        c = g.const(node.input[2]).astype(np.float64) * beta if has_c else np.zeros(())  # type: ignore[union-attr]
        c = np.broadcast_to(c, np.broadcast_shapes(c.shape, (len(s),)))
        c2 = c * s + t
        set_attr(node, "beta", 1.0)
    else:
        b = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b64 = np.zeros(len(s)) if b is None else b.astype(np.float64)
        c2 = b64 * s + t
    g.set_const(node, bias_index, c2.astype(dtype), f"{name}_bias_folded")
    _rewire(g, node, chain, None)


def _rewire(
    g: Graph, node: onnx.NodeProto, chain: _Chain, add: tuple[onnx.NodeProto, np.ndarray] | None
) -> None:
    """Weighted op -> [Add t] -> transposes -> the chain's last tensor; affine ops removed."""
    tensor = node.output[0]
    if add is not None:
        tail, t = add
        t_name = g.add_const(f"{tail.name or tail.output[0]}_shift", t)
        del tail.input[:]
        tail.input.extend([tensor, t_name])
        tail.op_type = "Add"
        del tail.attribute[:]
        tensor = g.unique(f"{tensor}_shifted") if chain.transposes else chain.last
        tail.output[0] = tensor
    for op in chain.ops:
        if add is None or op is not add[0]:
            g.kill(op)
    for tr in chain.transposes:
        tr.input[0] = tensor
        tensor = tr.output[0]
    if tensor != chain.last:
        if chain.transposes:
            chain.transposes[-1].output[0] = chain.last
        else:
            node.output[0] = chain.last


def _only_a_bias(node: onnx.NodeProto, chain: _Chain) -> bool:
    """A MatMul's lone bias Add: folding would rewrite it into the same Add."""
    return (
        node.op_type == "MatMul"
        and len(chain.ops) == 1
        and chain.ops[0].op_type == "Add"
        and not chain.transposes
    )


def fold_affine(g: Graph) -> Outcome:
    """Fold every foldable chain (one pass: a fold touches only its own chain's nodes)."""
    done = []
    for node in g.nodes():
        if node.op_type not in WEIGHTED or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul" and g.is_const(node.input[0]):
            continue
        chain = _follow(g, node)
        if chain is None or _only_a_bias(node, chain):
            continue
        _fold(g, node, chain)
        done.append(f"{label(node)} <- {', '.join(op.op_type for op in chain.ops)}")
    g.commit()
    return Outcome(done)
