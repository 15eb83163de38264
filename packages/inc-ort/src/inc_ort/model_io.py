"""Reading and writing ONNX models: paths, ModelProtos, external data; never touching the input."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from inc_core.errors import ModelError

from ._runtime import onnx, ort

#: protobuf's hard limit; larger models must keep their tensors in external data
PROTOBUF_LIMIT = 2**31 - 1
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def load(model: Any) -> onnx.ModelProto:
    """A private copy of the user's model (a path or a ModelProto), external data loaded."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    path = Path(os.fspath(model))
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file; give the path of a .onnx model")
    try:
        # Reads external data relative to the model's folder; only reads, never writes.
        proto = onnx.load_model(str(path), load_external_data=True)
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
            "give a file written by onnx.save_model or an exporter"
        ) from exc
    if not proto.graph.node:
        raise ModelError(f"{path} is not an ONNX model: it has no graph nodes")
    return proto


#: every onnxruntime release inc-ort supports (>= 1.20) loads opsets up to 21
KNOWN_LOADABLE_OPSET = 21
#: ops that only an already-quantized graph holds (QDQ, QOperator, integer and n-bit kernels)
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "QGemm",
        "QAttention",
        "QEmbedLayerNormalization",
    }
)


#: protobuf tag of ModelProto field 1 (ir_version, a varint)
IR_VERSION_TAG = b"\x08"


def is_onnx_file(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model whatever its name (``model.bin``): its graph parses
    and has nodes. Only the graph is read (no external data), nothing is written."""
    try:
        with open(path, "rb") as file:
            if file.read(1) != IR_VERSION_TAG:  # onnx writes ir_version, field 1, first
                return False
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(proto.graph.node) and proto.ir_version > 0


def _opset(model: onnx.ModelProto) -> int | None:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return max(versions) if versions else None


@functools.cache
def highest_opset() -> int:
    """The newest default-domain opset both the installed onnx and onnxruntime load."""
    from onnx import TensorProto, helper

    top = onnx.defs.onnx_opset_version()
    for version in range(top, KNOWN_LOADABLE_OPSET, -1):
        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [out]
        )
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        probe.ir_version = min(probe.ir_version, 10)
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:
            continue
        return version
    return KNOWN_LOADABLE_OPSET


def check_opset(model: onnx.ModelProto, where: str = "the model") -> None:
    """A ``ModelError`` naming the supported range when onnxruntime cannot load the opset."""
    # older opsets are converted to 13 on inc's copy (graph.with_quantizable_opset)
    found = _opset(model)
    if found is None or found <= KNOWN_LOADABLE_OPSET:
        return
    top = highest_opset()
    if found <= top:
        return
    raise ModelError(
        f"{where} uses ONNX opset {found}; inc-ort runs opsets up to {top} with onnx "
        f"{onnx.__version__} and onnxruntime {ort.__version__} (opsets below 13 are converted "
        f"to 13 on inc's copy): export it with an opset "
        f"in that range (e.g. torch.onnx.export(..., opset_version={min(17, top)})) or convert "
        f"it: onnx.version_converter.convert_version(model, {min(17, top)})"
    )


def check_not_quantized(model: onnx.ModelProto, where: str = "the model") -> None:
    """A ``ModelError`` when the graph is already int8 (QDQ or QOperator): quantizing it again
    would requantize dequantized values, so inc refuses and says where the fp32 model is needed."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return
    found = ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    raise ModelError(
        f"{where} is already quantized (it holds {found}): inc quantizes fp32 models; give it "
        "the fp32 model the int8 one was made from"
    )


def check(model: onnx.ModelProto, where: str = "the model") -> None:
    """Validate the user's input model: a loadable opset, not already int8, and the ONNX
    checker (through a file when the proto is too big to serialize)."""
    check_opset(model, where)
    check_not_quantized(model, where)
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{where} is not a valid ONNX model: {exc}") from exc


def save(model: onnx.ModelProto, path: Path, external: bool | None = None) -> list[str]:
    """Write ``model`` to ``path``; with external data (``<name>.data`` beside it) when big.

    Returns the file names written, relative to ``path.parent``.
    """
    if external is None:
        external = model.ByteSize() >= PROTOBUF_LIMIT - 2**26
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if external:
        data_name = f"{path.name}.data"
        onnx.save_model(
            copy,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        return [path.name, data_name]
    onnx.save_model(copy, str(path))
    return [path.name]
