"""Types and shapes for every tensor, by the first method that works on this graph:
onnx's shape inference, onnxruntime's symbolic shape inference (symbolic dims), or a run of the
model on dummy inputs with every tensor as an output (paddle2onnx graphs both others reject)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._runtime import onnx, ort
from ..model_io import PROTOBUF_LIMIT
from ._graph import Graph, Outcome, Skip

#: the runtime probe's two runs give a dynamic input dimension these sizes: (first dim, the
#: others). A dim of an intermediate that differs between the two runs is written as symbolic,
#: so the sizes must stay apart through a CNN's downsampling: with H = W = 1 and 2 every
#: feature map past a stride-2 conv was 1x1 in both runs and written as fixed 1 (PP-OCR's
#: classifier: [N, 200, 1, 1] for a tensor that is [8, 200, 2, 96] on its real inputs), which
#: onnxruntime then trusts. 64 and 128 stay apart through 64x downsampling and are multiples
#: of 32 (detectors concatenate upsampled maps); the first dim (a batch) stays small.
_PROBE_SIZES = ((1, 64), (2, 128))


def _untyped(model: onnx.ModelProto) -> list[str]:
    """Node outputs with no element type or no rank (graph outputs: no element type)."""
    known = {
        vi.name
        for vi in model.graph.value_info
        if vi.type.tensor_type.elem_type and vi.type.tensor_type.HasField("shape")
    }
    # the user's declared outputs stay as declared (inference does not rewrite them)
    known.update(vi.name for vi in model.graph.output if vi.type.tensor_type.elem_type)
    return [o for n in model.graph.node for o in n.output if o and o not in known]


#: initializers at most this large keep their values in the copy shape inference reads (shape
#: and axes operands); larger ones keep only type and dims (copying 100 MB of weights to infer
#: shapes took seconds on ResNet-50)
_SMALL = 4096


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without large initializer values: enough for type and shape inference."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, src = light.graph, model.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.output.extend(src.output)
    graph.value_info.extend(src.value_info)
    for init in src.initializer:
        if int(np.prod(init.dims)) <= _SMALL:
            graph.initializer.append(init)
        else:
            graph.initializer.append(
                onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
            )
    return light


def _with_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(
        light_copy(model), check_type=False, strict_mode=False, data_prop=True
    )


def _with_symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # the full model: symbolic inference reads initializer values (e.g. a vocabulary size)
    out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    if out is None:
        raise RuntimeError("symbolic shape inference returned no model")
    return out


def _dummy(vi: onnx.ValueInfoProto, sizes: tuple[int, int]) -> np.ndarray:
    tt = vi.type.tensor_type
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else sizes[min(i, 1)]
        for i, d in enumerate(tt.shape.dim)
    ]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    if np.issubdtype(dtype, np.floating):
        return np.random.default_rng(0).uniform(0, 1, dims).astype(dtype)
    return np.zeros(dims, dtype=dtype)  # ids, lengths, masks: zero is valid for all of them


def _with_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    have = {o.name for o in probe.graph.output}
    for name in (o for n in probe.graph.node for o in n.output):
        if name and name not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sess = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    inits = {i.name for i in model.graph.initializer}
    feeds = [
        {vi.name: _dummy(vi, sizes) for vi in model.graph.input if vi.name not in inits}
        for sizes in _PROBE_SIZES
    ]
    names = [o.name for o in sess.get_outputs()]
    runs = [dict(zip(names, sess.run(None, feed), strict=True)) for feed in feeds]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    outputs = {o.name for o in model.graph.output}
    for name in names:
        a, b = (np.asarray(r[name]) for r in runs)
        if name in outputs or a.dtype == object:
            continue
        dims: list[Any] = [
            da if da == db else f"{name}_dim{i}"
            for i, (da, db) in enumerate(zip(a.shape, b.shape, strict=False))
        ]
        if a.ndim != b.ndim:
            dims = [f"{name}_dim{i}" for i in range(a.ndim)]
        elem = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
        out.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    return out


def infer(g: Graph) -> Outcome:
    """Fill ``value_info``; ``detail`` says which method worked and why the others did not."""
    if sum(len(i.raw_data) for i in g.model.graph.initializer) >= PROTOBUF_LIMIT:
        raise Skip("model is larger than protobuf's 2 GiB limit for in-memory inference")
    tried: dict[str, str] = {}
    for method, fn in (
        ("onnx", _with_onnx),
        ("symbolic", _with_symbolic),
        ("runtime", _with_runtime),
    ):
        try:
            inferred = fn(g.model)
        except Exception as exc:  # each method fails on some graphs; the next one may not
            tried[method] = (
                f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            )
            continue
        missing = _untyped(inferred)
        if missing:
            tried[method] = f"partial: {len(missing)} tensors untyped (e.g. {missing[0]})"
            continue
        tried[method] = "ok"
        del g.model.graph.value_info[:]
        g.model.graph.value_info.extend(inferred.graph.value_info)
        g.refresh()
        return Outcome(
            [], {"method": method, "tried": tried, "tensors": len(inferred.graph.value_info)}
        )
    raise Skip("no method typed every tensor: " + "; ".join(f"{k} {v}" for k, v in tried.items()))


def types_only(g: Graph) -> None:
    """Best-effort types and ranks for the rewrites (onnx inference; nothing when it fails)."""
    try:
        inferred = _with_onnx(g.model)
    except Exception:
        return
    del g.model.graph.value_info[:]
    g.model.graph.value_info.extend(inferred.graph.value_info)
    g.refresh()
