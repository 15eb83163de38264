"""``TfLiteModel``: the int8 model users get back, callable like the Keras model it came from.

It holds the ``.tflite`` flatbuffer and runs it with the TFLite (LiteRT) interpreter, one
interpreter per thread (an interpreter is not safe to share between threads).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from inc_core.errors import DataError


@dataclass(frozen=True)
class IoSpec:
    """The model's input names (signature keys, in Keras order) and how outputs are shaped."""

    inputs: list[str]
    input_dtypes: list[str]
    outputs: list[str]
    output_kind: str  # "single", "list" or "dict"
    #: each op's output shape without the batch dimension (None: any size), as Keras has it;
    #: the converter may keep an op's output flattened (reshape pairs folded)
    op_shapes: dict[str, list[int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IoSpec:
        return cls(**data)


def _interpreter_class() -> Any:
    """tf.lite.Interpreter (deprecated in favour of ai_edge_litert, which is used when installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter


class TfLiteModel:
    """An int8 TFLite model; ``model(x)`` returns what the Keras model returns (as numpy).

    ``x`` is a numpy array or tensor (one input), a list of them (several inputs, Keras order)
    or a dict keyed by the Keras input names. Any batch size works.
    """

    def __init__(
        self,
        content: bytes,
        spec: IoSpec,
        input_names: list[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.content = bytes(content)
        self.spec = spec
        self.input_names = input_names or list(spec.inputs)
        self.num_threads = num_threads or os.cpu_count() or 1
        self._local = threading.local()

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                interpreter = _interpreter_class()(
                    model_content=self.content, num_threads=self.num_threads
                )
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
            # input/output order is the traced function's: spec.inputs / spec.outputs
            self._local.inputs = [d["index"] for d in interpreter.get_input_details()]
            self._local.outputs = [d["index"] for d in interpreter.get_output_details()]
            self._local.shapes = [None] * len(self._local.inputs)
        return interpreter

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        interpreter = self._interpreter()
        local = self._local
        if any(a.shape != s for a, s in zip(arrays, local.shapes, strict=True)):
            for index, array in zip(local.inputs, arrays, strict=True):
                interpreter.resize_tensor_input(index, array.shape, strict=False)
            interpreter.allocate_tensors()
            local.shapes = [a.shape for a in arrays]
        for index, array in zip(local.inputs, arrays, strict=True):
            interpreter.set_tensor(index, array)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in local.outputs]

    def _feeds(self, inputs: Any) -> list[np.ndarray]:
        if isinstance(inputs, Mapping):
            missing = [n for n in self.input_names if n not in inputs]
            if missing:
                raise DataError(f"inputs are missing {missing}; the model takes {self.input_names}")
            values = [inputs[n] for n in self.input_names]
        elif isinstance(inputs, (list, tuple)) and len(self.spec.inputs) > 1:
            values = list(inputs)
        else:
            values = [inputs]
        if len(values) != len(self.spec.inputs):
            raise DataError(
                f"the model takes {len(self.spec.inputs)} inputs ({self.input_names}), got {len(values)}"
            )
        return [
            np.ascontiguousarray(value, dtype=dtype)
            for value, dtype in zip(values, self.spec.input_dtypes, strict=True)
        ]

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the int8 model on one batch; ``training=`` and other Keras kwargs are ignored."""
        arrays = self._feeds(inputs)
        try:
            result = self._run(arrays)
        except (ValueError, RuntimeError) as exc:
            shapes = [a.shape for a in arrays]
            raise DataError(f"the int8 model cannot run inputs of shapes {shapes}: {exc}") from exc
        if self.spec.output_kind == "dict":
            return dict(zip(self.spec.outputs, result, strict=True))
        if self.spec.output_kind == "list":
            return result
        return result[0]

    predict = __call__

    def tensor_details(self) -> list[dict[str, Any]]:
        """The interpreter's tensors with their quantization parameters (scales, zero points)."""
        details: list[dict[str, Any]] = self._interpreter().get_tensor_details()
        return details

    def op_names(self) -> list[str]:
        """Builtin op names in execution order, e.g. ['QUANTIZE', 'CONV_2D', ...]."""
        return [op["op_name"] for op in self._interpreter()._get_ops_details()]

    def __getstate__(self) -> dict[str, Any]:  # picklable for process executors
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TfLiteModel({len(self.content)} bytes, inputs={self.input_names})"
