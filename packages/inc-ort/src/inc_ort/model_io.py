"""Reading and writing ONNX models: paths, ModelProtos, external data; never touching the input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inc_core.errors import ModelError

from ._runtime import onnx

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


def check(model: onnx.ModelProto, where: str = "the model") -> None:
    """Validate with the ONNX checker (through a file when the proto is too big to serialize)."""
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
