"""Save and load inc-tf's int8 models: the TFLite flatbuffer and its input/output spec.

Files written: ``model.tflite`` (what the TFLite converter produced, run by the interpreter)
and ``io.json`` (the input names and the quantization of inputs and outputs). No code is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inc_core.errors import ModelError

from .runtime import IoSpec, TfLiteModel

MODEL_FILE = "model.tflite"
IO_FILE = "io.json"


def save(model: TfLiteModel, directory: Path) -> list[str]:
    """Write ``model`` into ``directory`` (which exists); returns the relative paths written."""
    if not isinstance(model, TfLiteModel):
        raise ModelError(f"inc-tf saves its int8 TfLiteModel, got {type(model).__name__}")
    (directory / MODEL_FILE).write_bytes(model.content)
    io = {"spec": model.spec.to_dict(), "input_names": model.input_names}
    (directory / IO_FILE).write_text(json.dumps(io, indent=2))
    return [MODEL_FILE, IO_FILE]


def load(directory: Path, num_threads: Any = None) -> TfLiteModel:
    """What ``save`` wrote, ready to run (``num_threads`` for the interpreter)."""
    io = json.loads((directory / IO_FILE).read_text())
    return TfLiteModel(
        (directory / MODEL_FILE).read_bytes(),
        IoSpec.from_dict(io["spec"]),
        input_names=io["input_names"],
        num_threads=num_threads,
    )
