"""Constants where the other rewrites can see them: Constant nodes and initializers-as-inputs
become plain initializers, and nodes computed from constants only are folded."""

from __future__ import annotations

import numpy as np

from .._runtime import onnx
from ._graph import Graph, Outcome, Skip, label

#: ops whose value is not a function of their inputs, or that carry a graph: never folded
_NOT_FOLDABLE = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan", "Constant",
    # an already-quantized model keeps its int8 weights and their DequantizeLinear
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}  # fmt: skip
#: a folded tensor may be this large, or as large as its inputs together (a ConstantOfShape or
#: Expand must not turn a few bytes into a huge initializer)
MAX_FOLDED_ELEMENTS = 1 << 20


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        value: np.ndarray = onnx.numpy_helper.to_array(attr.t)
        return value
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    return None  # strings and sparse tensors stay Constant nodes


def constants_to_initializers(g: Graph) -> Outcome:
    """``Constant`` nodes (paddle2onnx writes hundreds) become initializers of the same name."""
    done = []
    for node in g.nodes():
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        value = _constant_value(node)
        name = node.output[0]
        if value is None or name in g.outputs or name in g.inits:
            continue
        tensor = onnx.numpy_helper.from_array(value, name)
        g.graph.initializer.append(tensor)
        g.kill(node)
        done.append(label(node))
    g.commit()
    return Outcome(done)


def initializers_not_inputs(g: Graph) -> Outcome:
    """Initializers also listed as graph inputs (IR < 4 exporters, e.g. old tf2onnx) are
    overridable, so onnxruntime folds nothing through them; inc's copy lists them as
    initializers only (the model's real inputs are unchanged)."""
    if g.model.ir_version < 4:
        raise Skip(f"IR version {g.model.ir_version} < 4 requires initializers to be inputs")
    shadowed = [i for i in g.graph.input if i.name in g.inits]
    if not shadowed:
        return Outcome()
    keep = [i for i in g.graph.input if i.name not in g.inits]
    del g.graph.input[:]
    g.graph.input.extend(keep)
    g.refresh()
    return Outcome([], {"initializers": len(shadowed)})


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain or ""): o.version for o in model.opset_import}


def fold_constants(g: Graph) -> Outcome:
    """Evaluate nodes whose inputs are all initializers (onnx's reference evaluator) and keep
    their outputs as initializers, in graph order so chains of constant nodes fold in one pass."""
    from onnx.reference import ReferenceEvaluator

    opsets = _opsets(g.model)
    done = []
    for node in g.nodes():
        if (
            node.op_type in _NOT_FOLDABLE
            or node.domain not in ("", "ai.onnx")
            or not any(node.input)
            or not all(name == "" or g.is_const(name) for name in node.input)
            or any(name in g.pinned or name in g.outputs for name in node.output)
        ):
            continue
        feeds = {name: g.const(name) for name in node.input if name}
        # every input is a constant (checked above), so no value is None
        budget = max(MAX_FOLDED_ELEMENTS, sum(int(v.size) for v in feeds.values() if v is not None))
        try:
            results = ReferenceEvaluator(node, opsets={"": opsets.get("", 13)}).run(None, feeds)
        except Exception:  # an op the evaluator lacks or rejects stays for the runtime
            continue
        if any(np.asarray(r).size > budget for r in results):
            continue
        for name, value in zip(node.output, results, strict=False):
            if name:
                g.add_const_named(name, np.asarray(value))
        g.kill(node)
        done.append(label(node))
    g.commit()
    return Outcome(done)
