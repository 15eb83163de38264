"""Exporter-decomposed LayerNorm and GELU, rewritten as the fused op onnxruntime runs as one
kernel. The fused node takes the name of the pattern's first node."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from .._runtime import onnx
from ..graph import opset
from ._graph import Graph, Outcome, attrs, label

MS = "com.microsoft"


def _other(node: onnx.NodeProto, tensor: str) -> str:
    """The operand of binary ``node`` that is not ``tensor``."""
    other: str = node.input[1] if node.input[0] == tensor else node.input[0]
    return other


def _reads_only(g: Graph, tensor: str, node: onnx.NodeProto) -> bool:
    """``node`` is the one reader of ``tensor`` (``Graph.sole_consumer``).

    A function rather than ``g.sole_consumer(t) is node`` inline: where onnx's types are unknown
    (the lint env has no onnx), mypy narrows ``node`` after ``is`` to ``sole_consumer``'s
    ``Any | None``, undoing the caller's None checks.
    """
    return g.sole_consumer(tensor) is node


def _scalar(g: Graph, node: onnx.NodeProto, tensor: str) -> tuple[float, str] | None:
    """(constant scalar operand, the other operand) of a binary node reading ``tensor``."""
    if len(node.input) != 2 or tensor not in node.input:
        return None
    other = _other(node, tensor)
    k = g.const(other)
    if k is None or k.size != 1:
        return None
    return float(k.reshape(-1)[0]), other


def _only(g: Graph, tensor: str, op: str) -> onnx.NodeProto | None:
    node = g.sole_consumer(tensor)
    return (
        node if node is not None and node.op_type == op and node.domain in ("", "ai.onnx") else None
    )


def _axes(g: Graph, node: onnx.NodeProto) -> list[int] | None:
    a = attrs(node)
    if "axes" in a:
        return list(a["axes"])  # type: ignore[call-overload]
    if len(node.input) > 1 and node.input[1]:
        k = g.const(node.input[1])
        return None if k is None else [int(v) for v in k.reshape(-1)]
    return None


def _layernorm_at(
    g: Graph, rm1: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], dict[str, Any]] | None:
    x = rm1.input[0]
    axes = _axes(g, rm1)
    if axes is None or not attrs(rm1).get("keepdims", 1):
        return None
    rank = g.rank(x)
    if rank is not None:
        axes = sorted(a % rank for a in axes)
        if axes != list(range(rank - len(axes), rank)):
            return None
        axis = -len(axes)
    elif axes == [-1]:
        axis = -1
    else:
        return None
    sub = _only(g, rm1.output[0], "Sub")
    if sub is None or list(sub.input) != [x, rm1.output[0]]:
        return None
    d = sub.output[0]
    users = g.consumers(d)
    if not g.free(d) or len(users) != 2:
        return None
    sq = next(
        (u for u in users if u.op_type == "Pow" and (_scalar(g, u, d) or (0.0,))[0] == 2.0), None
    )
    if sq is None:
        sq = next((u for u in users if u.op_type == "Mul" and list(u.input) == [d, d]), None)
    div = next((u for u in users if u.op_type == "Div" and u.input[0] == d), None)
    if sq is None or div is None:
        return None
    rm2 = _only(g, sq.output[0], "ReduceMean")
    if rm2 is None or _axes(g, rm2) != _axes(g, rm1):
        return None
    add = _only(g, rm2.output[0], "Add")
    eps = _scalar(g, add, rm2.output[0]) if add is not None else None
    sqrt = _only(g, add.output[0], "Sqrt") if add is not None else None
    if eps is None or sqrt is None or not _reads_only(g, sqrt.output[0], div):
        return None
    nodes = [rm1, sub, sq, rm2, add, sqrt, div]
    out, gamma, beta = div.output[0], None, None
    mul = _only(g, out, "Mul")
    if mul is not None:
        other = _other(mul, out)
        if g.const(other) is not None:
            gamma, out = g.const(other), mul.output[0]
            nodes.append(mul)
            bias = _only(g, out, "Add")
            if bias is not None:
                other = _other(bias, out)
                if g.const(other) is not None:
                    beta, out = g.const(other), bias.output[0]
                    nodes.append(bias)
    return nodes, {"x": x, "axis": axis, "eps": eps[0], "gamma": gamma, "beta": beta}


def _norm_shape(g: Graph, x: str, axis: int) -> list[int] | None:
    shape = g.shapes.get(x)
    if shape is None:
        return None
    dims = shape[axis:]
    return (
        None
        if any(not isinstance(d, int) or d <= 0 for d in dims)
        else cast("list[int]", list(dims))
    )


def _param(
    value: np.ndarray | None, shape: list[int] | None, fill: float, axis: int
) -> np.ndarray | None:
    """A LayerNormalization scale/bias of the normalized shape, or None when it is not one."""
    if value is None:
        return None if shape is None else np.full(shape, fill, np.float32)
    squeezed = value.reshape(
        value.shape[next((i for i, d in enumerate(value.shape) if d != 1), value.ndim) :]
    )
    if shape is not None:
        try:
            return np.broadcast_to(value, shape).astype(value.dtype).copy()
        except ValueError:
            return None
    return squeezed if squeezed.ndim == -axis else None


def layernorm(g: Graph) -> Outcome:
    version = opset(g.model)
    found, done = [], []
    for node in g.nodes():
        if node.op_type == "ReduceMean" and not g.is_dead(node):
            match = _layernorm_at(g, node)
            if match is None:
                continue
            nodes, m = match
            if version < 17:
                found.append(label(node))
                continue
            shape = _norm_shape(g, m["x"], m["axis"])
            gamma = _param(m["gamma"], shape, 1.0, m["axis"])
            beta = _param(m["beta"], shape, 0.0, m["axis"]) if m["beta"] is not None else None
            if gamma is None or (m["beta"] is not None and beta is None):
                continue
            last = nodes[-1]
            inputs = [m["x"], g.add_const(f"{label(node)}_scale", gamma.astype(np.float32))]
            if beta is not None:
                inputs.append(g.add_const(f"{label(node)}_bias", beta.astype(np.float32)))
            fused = onnx.helper.make_node(
                "LayerNormalization", inputs, [last.output[0]], name=node.name,
                axis=m["axis"], epsilon=m["eps"],
            )  # fmt: skip
            for n in nodes:
                g.kill(n)
            g.graph.node.append(fused)
            done.append(label(node))
    g.commit()
    detail = {"left_decomposed": found, "reason": f"opset {version} < 17"} if found else {}
    return Outcome(done, detail)


def _gelu_tail(
    g: Graph, x: str, plus_one: onnx.NodeProto
) -> tuple[list[onnx.NodeProto], str] | None:
    """``0.5 * x * (1 + f)`` around the Add(1) node: the nodes after it and the output tensor."""
    p = plus_one.output[0]
    mul = _only(g, p, "Mul")
    if mul is None:
        return None
    other = _other(mul, p)
    if other == x:  # (x * (1+f)) * 0.5
        half = _only(g, mul.output[0], "Mul")
        k = _scalar(g, half, mul.output[0]) if half is not None else None
        if half is None or k is None or not math.isclose(k[0], 0.5, rel_tol=1e-6):
            return None
        return [mul, half], half.output[0]
    half = g.producer.get(other)  # (x * 0.5) * (1+f)
    k = _scalar(g, half, x) if half is not None and half.op_type == "Mul" else None
    if half is None or k is None or not math.isclose(k[0], 0.5, rel_tol=1e-6):
        return None
    if not _reads_only(g, half.output[0], mul):
        return None
    return [half, mul], mul.output[0]


def _gelu_erf(g: Graph, erf: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, str] | None:
    scale = g.producer.get(erf.input[0])
    if (
        scale is None
        or scale.op_type not in ("Div", "Mul")
        or not _reads_only(g, erf.input[0], erf)
    ):
        return None
    x = next((i for i in scale.input if not g.is_const(i)), None)
    k = _scalar(g, scale, x) if x is not None else None
    want = math.sqrt(2.0) if scale.op_type == "Div" else 1 / math.sqrt(2.0)
    if k is None or x is None or not math.isclose(k[0], want, rel_tol=1e-4):
        return None
    found = _plus_one_tail(g, erf.output[0], x)
    if found is None:
        return None
    add, (tail, out) = found
    return [scale, erf, add, *tail], x, out


def _plus_one_tail(
    g: Graph, tensor: str, x: str
) -> tuple[onnx.NodeProto, tuple[list[onnx.NodeProto], str]] | None:
    """The ``Add(tensor, 1)`` after erf/tanh and the GELU tail (``x * ... * 0.5``) after it."""
    plus = _only(g, tensor, "Add")
    one = _scalar(g, plus, tensor) if plus is not None else None
    if plus is None or one is None or one[0] != 1.0:
        return None
    tail = _gelu_tail(g, x, plus)
    return None if tail is None else (plus, tail)


def _gelu_tanh(g: Graph, tanh: onnx.NodeProto) -> tuple[list[onnx.NodeProto], str, str] | None:
    outer = g.producer.get(tanh.input[0])  # sqrt(2/pi) * (x + 0.044715 x^3)
    if outer is None or outer.op_type != "Mul" or not _reads_only(g, tanh.input[0], tanh):
        return None
    inner = next((i for i in outer.input if not g.is_const(i)), "")
    k = _scalar(g, outer, inner)
    add = g.producer.get(inner)
    if k is None or not math.isclose(k[0], math.sqrt(2 / math.pi), rel_tol=1e-4) or add is None:
        return None
    if add.op_type != "Add" or not _reads_only(g, inner, outer):
        return None
    for x, cube_t in (add.input, add.input[::-1]):
        coef = g.producer.get(cube_t)
        if coef is None or coef.op_type != "Mul" or not _reads_only(g, cube_t, add):
            continue
        cube_in = next((i for i in coef.input if not g.is_const(i)), "")
        c = _scalar(g, coef, cube_in)
        cube = g.producer.get(cube_in)
        if c is None or not math.isclose(c[0], 0.044715, rel_tol=1e-4) or cube is None:
            continue
        p = _scalar(g, cube, x) if cube.op_type == "Pow" else None
        if p is None or p[0] != 3.0 or not _reads_only(g, cube_in, coef):
            continue
        found = _plus_one_tail(g, tanh.output[0], x)
        if found is None:
            return None
        plus, (tail, out) = found
        return [cube, coef, add, outer, tanh, plus, *tail], x, out
    return None


def gelu(g: Graph) -> Outcome:
    """Erf GELU -> ``com.microsoft::Gelu``; tanh GELU -> ``com.microsoft::FastGelu`` (the
    contrib kernels onnxruntime's CPU provider runs at any opset); at opset >= 20 ONNX ``Gelu``
    (onnxruntime 1.32, 2 threads, 64x3072: tanh form 103 us vs FastGelu's 158 us; erf equal)."""
    version = opset(g.model)
    done = []
    for node in g.nodes():
        if g.is_dead(node):
            continue
        if node.op_type == "Erf":
            match, op = _gelu_erf(g, node), "Gelu"
        elif node.op_type == "Tanh":
            match, op = _gelu_tanh(g, node), "FastGelu"
        else:
            continue
        if match is None:
            continue
        nodes, x, out = match
        if version >= 20:
            approximate = "tanh" if op == "FastGelu" else "none"
            fused = onnx.helper.make_node(
                "Gelu", [x], [out], name=nodes[0].name, approximate=approximate
            )
        else:
            fused = onnx.helper.make_node(op, [x], [out], name=nodes[0].name, domain=MS)
        for n in nodes:
            g.kill(n)
        g.graph.node.append(fused)
        done.append(label(nodes[0]))
    if done and version < 20 and not any(o.domain == MS for o in g.model.opset_import):
        g.model.opset_import.append(onnx.helper.make_opsetid(MS, 1))
    g.commit()
    return Outcome(done)


# ---------------------------------------------------------------- hard-swish / hard-sigmoid

#: ONNX HardSwish's gate: HardSwish(x) = x * HardSigmoid(x, alpha=1/6, beta=0.5)
HS_ALPHA, HS_BETA = 1.0 / 6.0, 0.5


def _near(value: float | None, want: float) -> bool:
    return value is not None and math.isclose(value, want, rel_tol=1e-5, abs_tol=1e-7)


def _keeps_shape(g: Graph, x: str, k: np.ndarray) -> bool:
    """A size-1 constant that cannot broadcast ``x`` to a higher rank."""
    if k.ndim <= 1:
        return True
    rank = g.rank(x)
    return rank is not None and k.ndim <= rank


def _const_operand(g: Graph, node: onnx.NodeProto | None, tensor: str) -> float | None:
    """The scalar constant operand of binary ``node`` whose other operand is ``tensor``."""
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    found = _scalar(g, node, tensor)
    if found is None or not _keeps_shape(g, tensor, g.const(found[1])):  # type: ignore[arg-type]
        return None
    if node.op_type == "Div" and node.input[0] != tensor:  # k / x is no scaling of x
        return None
    return found[0]


def _clip_bounds(g: Graph, clip: onnx.NodeProto) -> tuple[float, float] | None:
    a = attrs(clip)
    if "min" in a or "max" in a or len(clip.input) == 1:  # opset < 11: bounds are attributes
        return float(a.get("min", -math.inf)), float(a.get("max", math.inf))  # type: ignore[arg-type]
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        name = clip.input[index] if len(clip.input) > index else ""
        if not name:
            bounds.append(default)
            continue
        k = g.const(name)
        if k is None or k.size != 1:
            return None
        bounds.append(float(k.reshape(-1)[0]))
    return bounds[0], bounds[1]


def _scaled(g: Graph, tensor: str, factor: float) -> onnx.NodeProto | None:
    """The sole reader of ``tensor`` when it multiplies it by ``factor`` (Mul k or Div 1/k)."""
    node = g.sole_consumer(tensor)
    if node is None or node.op_type not in ("Mul", "Div"):
        return None
    k = _const_operand(g, node, tensor)
    if k is None or k == 0.0:
        return None
    return node if _near(k if node.op_type == "Mul" else 1.0 / k, factor) else None


def _gate_at(
    g: Graph, clip: onnx.NodeProto
) -> tuple[str, float, float, list[onnx.NodeProto], str] | None:
    """A decomposed hard-sigmoid ending at or after ``clip``: (x, alpha, beta, nodes, output).

    ``Clip(x + 3, 0, 6) / 6`` (paddle2onnx's hard_swish gate, torch's relu6(x + 3) / 6) and
    ``Clip(x * a + b, 0, 1)`` (paddle2onnx's hard_sigmoid before opset 6 kernels were used).
    For the first form without its ``/ 6`` (the Mul with x comes first) the caller finishes it.
    """
    bounds = _clip_bounds(g, clip)
    add = g.producer.get(clip.input[0])
    if bounds is None or add is None or add.op_type != "Add":
        return None
    if not _reads_only(g, add.output[0], clip):
        return None
    x = next((i for i in add.input if not g.is_const(i)), None)
    beta = _const_operand(g, add, x) if x is not None else None
    if x is None or beta is None:
        return None
    lo, hi = bounds
    if _near(beta, 3.0) and lo == 0.0 and _near(hi, 6.0):
        div = _scaled(g, clip.output[0], 1.0 / 6.0)
        if div is None:
            return None
        return x, HS_ALPHA, HS_BETA, [add, clip, div], div.output[0]
    if lo == 0.0 and hi == 1.0:
        scale = g.producer.get(x)
        if scale is not None and scale.op_type in ("Mul", "Div") and _reads_only(g, x, add):
            inner = next((i for i in scale.input if not g.is_const(i)), None)
            k = _const_operand(g, scale, inner) if inner is not None else None
            if inner is not None and k is not None and k != 0.0:
                alpha = k if scale.op_type == "Mul" else 1.0 / k
                return inner, alpha, beta, [scale, add, clip], clip.output[0]
    return None


def _swish_after_clip(
    g: Graph, clip: onnx.NodeProto
) -> tuple[str, list[onnx.NodeProto], str] | None:
    """``x * Clip(x + 3, 0, 6) / 6`` (paddle2onnx's hard_swish): (x, nodes, output)."""
    bounds = _clip_bounds(g, clip)
    add = g.producer.get(clip.input[0])
    if bounds is None or add is None or add.op_type != "Add" or bounds != (0.0, 6.0):
        return None
    if not _reads_only(g, add.output[0], clip):
        return None
    x = next((i for i in add.input if not g.is_const(i)), None)
    if x is None or not _near(_const_operand(g, add, x), 3.0):
        return None
    mul = g.sole_consumer(clip.output[0])
    if mul is None or mul.op_type != "Mul" or sorted(mul.input) != sorted([x, clip.output[0]]):
        return None
    div = _scaled(g, mul.output[0], 1.0 / 6.0)
    if div is None:
        return None
    return x, [add, clip, mul, div], div.output[0]


def _times_x(g: Graph, x: str, gate: str) -> onnx.NodeProto | None:
    """The sole reader of ``gate`` when it is ``Mul(x, gate)``."""
    mul = _only(g, gate, "Mul")
    return mul if mul is not None and sorted(mul.input) == sorted([x, gate]) else None


def hard_activations(g: Graph) -> Outcome:
    """Decomposed hard-swish / hard-sigmoid -> ONNX ``HardSwish`` / ``HardSigmoid``.

    paddle2onnx writes hard_swish as ``x * Clip(x + 3, 0, 6) / 6`` (four float ops after every
    conv); onnxruntime runs ``HardSwish`` as ``HardSigmoid`` + ``Mul`` and, in fp32, fuses both
    into the NCHWc conv before them. ``HardSigmoid(1/6, 0.5)`` followed by ``x *`` becomes
    ``HardSwish`` too. Below opset 14 (no ``HardSwish``) the hard-swish is written as
    ``HardSigmoid`` + ``Mul``, the form onnxruntime itself runs. The first node's name goes to
    the ``HardSigmoid``/``HardSwish``, a ``Mul`` that remains keeps its own name.
    """
    version = opset(g.model)
    done = []
    for node in g.nodes():
        if g.is_dead(node):
            continue
        if node.op_type == "Clip" and node.domain in ("", "ai.onnx"):
            swish = _swish_after_clip(g, node)
            if swish is not None:
                x, nodes, out = swish
                mul = next(n for n in nodes if n.op_type == "Mul")
            else:
                gate = _gate_at(g, node)
                if gate is None:
                    continue
                x, alpha, beta, nodes, out = gate
                mul = _times_x(g, x, out) if _near(alpha, HS_ALPHA) and beta == HS_BETA else None
                if mul is None:
                    _replace(g, nodes, [_hsig(nodes[0].name, x, out, alpha, beta)])
                    done.append(label(nodes[0]))
                    continue
                nodes, out = [*nodes, mul], mul.output[0]
        elif node.op_type == "HardSigmoid" and version >= 14:
            a = attrs(node)
            alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))  # type: ignore[arg-type]
            x = node.input[0]
            mul = _times_x(g, x, node.output[0])
            if not (_near(alpha, HS_ALPHA) and beta == HS_BETA) or mul is None:
                continue
            nodes, out = [node, mul], mul.output[0]
        else:
            continue
        first = nodes[0]
        if version >= 14:
            new = [onnx.helper.make_node("HardSwish", [x], [out], name=first.name)]
        else:
            gate_out = g.unique(f"{out}_hard_sigmoid")
            new = [
                _hsig(first.name, x, gate_out, HS_ALPHA, HS_BETA),
                onnx.helper.make_node("Mul", [x, gate_out], [out], name=mul.name),
            ]
        _replace(g, nodes, new)
        done.append(label(first))
    g.commit()
    return Outcome(done)


def _hsig(name: str, x: str, out: str, alpha: float, beta: float) -> onnx.NodeProto:
    return onnx.helper.make_node("HardSigmoid", [x], [out], name=name, alpha=alpha, beta=beta)


def _replace(g: Graph, old: list[onnx.NodeProto], new: list[onnx.NodeProto]) -> None:
    for n in old:
        g.kill(n)
    g.graph.node.extend(new)
