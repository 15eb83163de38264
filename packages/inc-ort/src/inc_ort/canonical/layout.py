"""Nodes that move or relabel data without computing: Transpose pairs, identity Casts, lossless
Cast round trips, Identity. Removing them lets int8 tensors flow between the ops around them."""

from __future__ import annotations

from .._runtime import onnx
from ._graph import Graph, Outcome, attrs, label, set_attr

T = onnx.TensorProto
#: types that hold every value of the key type exactly (a Cast there and back is the identity)
_WIDER: dict[int, set[int]] = {
    T.FLOAT: {T.DOUBLE},
    T.FLOAT16: {T.FLOAT, T.DOUBLE},
    T.BFLOAT16: {T.FLOAT, T.DOUBLE},
    T.INT8: {T.INT16, T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.UINT8: {T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT, T.DOUBLE},
    T.INT16: {T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
    T.INT32: {T.INT64, T.DOUBLE},
    T.UINT32: {T.INT64, T.UINT64, T.DOUBLE},
    T.BOOL: {T.UINT8, T.INT8, T.INT16, T.INT32, T.INT64, T.FLOAT, T.DOUBLE},
}


def _perm(g: Graph, node: onnx.NodeProto) -> list[int] | None:
    perm = attrs(node).get("perm")
    if perm:
        return list(perm)  # type: ignore[call-overload]
    rank = g.rank(node.input[0])
    return None if rank is None else list(range(rank - 1, -1, -1))


def transposes(g: Graph) -> Outcome:
    """Identity transposes go; ``Transpose(Transpose(x, p), q)`` becomes ``Transpose(x, p∘q)``
    (the second keeps its name), or nothing when that is the identity."""
    done = []
    for node in g.nodes():
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        perm = _perm(g, node)
        if perm is None:
            continue
        first = g.producer.get(node.input[0])
        if first is not None and first.op_type == "Transpose" and not g.is_dead(first):
            inner = _perm(g, first)
            if inner is not None and len(inner) == len(perm):
                perm = [inner[p] for p in perm]
                node.input[0] = first.input[0]
                set_attr(node, "perm", perm)
                g.note_reader(first.input[0], node)
                if not g.consumers(first.output[0]) and g.free(first.output[0]):
                    g.kill(first)
                done.append(label(node))
        identity = perm == list(range(len(perm)))
        if identity and g.bypass(node, node.input[0]) and (not done or done[-1] != label(node)):
            done.append(label(node))
    g.commit()
    return Outcome(done)


def casts(g: Graph) -> Outcome:
    """Casts to the type the tensor already has, and lossless round trips ``a -> b -> a``."""
    done = []
    for node in g.nodes():
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        to = int(attrs(node).get("to", 0))  # type: ignore[call-overload]
        src = g.types.get(node.input[0])
        if src == to:
            if g.bypass(node, node.input[0]):
                done.append(label(node))
            continue
        first = g.producer.get(node.input[0])
        if first is None or first.op_type != "Cast" or g.is_dead(first):
            continue
        origin = g.types.get(first.input[0])
        middle = int(attrs(first).get("to", 0))  # type: ignore[call-overload]
        if origin == to and middle in _WIDER.get(to, set()) and g.bypass(node, first.input[0]):
            done.append(label(node))
            if not g.consumers(first.output[0]) and g.free(first.output[0]):
                g.kill(first)
    g.commit()
    return Outcome(done)


def identities(g: Graph) -> Outcome:
    done = []
    for node in g.nodes():
        identity = node.op_type == "Identity" and node.domain in ("", "ai.onnx")
        if identity and g.bypass(node, node.input[0]):
            done.append(label(node))
    g.commit()
    return Outcome(done)
