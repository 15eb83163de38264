"""Running MXNet graphs: batches in, numpy out; parameters into runnable ``SymbolBlock``s."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from inc_core.errors import DataError


def mxnet_reason(exc: BaseException) -> str:
    """The informative line of an MXNet error (its message carries a C++ traceback)."""
    text = str(exc)
    if "MXNetError:" in text:
        text = text.rsplit("MXNetError:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def as_inputs(batch: Any, data_names: Sequence[str]) -> dict[str, mx.nd.NDArray]:
    """One batch (array, tuple/list of arrays, or dict by input name) as named NDArrays."""
    if isinstance(batch, Mapping):
        missing = [n for n in data_names if n not in batch]
        if missing:
            raise DataError(
                f"input batch has keys {sorted(batch)}; the model's inputs are {list(data_names)}"
            )
        items = [batch[n] for n in data_names]
    elif isinstance(batch, (tuple, list)) and (len(data_names) > 1 or len(batch) != 1):
        items = list(batch)
    elif isinstance(batch, (tuple, list)):
        items = [batch[0]]
    else:
        items = [batch]
    if len(items) != len(data_names):
        raise DataError(
            f"the model takes {len(data_names)} input(s) ({', '.join(data_names)}), "
            f"a batch gave {len(items)}; give a tuple in input order or a dict by input name"
        )
    return {name: _as_nd(value) for name, value in zip(data_names, items, strict=True)}


def _as_nd(value: Any) -> mx.nd.NDArray:
    if isinstance(value, mx.nd.NDArray):
        return value.astype("float32", copy=False)
    return mx.nd.array(np.asarray(value, dtype=np.float32))


class GraphBlock(gluon.SymbolBlock):
    """A ``SymbolBlock`` that keeps its graph and input names, for saving and inspection.

    This is what inc returns for a quantized MXNet model: call it like any Gluon block.
    """

    def __init__(self, symbol: mx.sym.Symbol, data_names: Sequence[str]) -> None:
        with warnings.catch_warnings():
            # the input dtype is unknown before the first batch; float32 is right
            warnings.filterwarnings("ignore", "Cannot decide type", UserWarning)
            super().__init__(symbol, [mx.sym.var(n) for n in data_names])
        self.graph = symbol
        self.data_names = tuple(data_names)

    def arrays(self) -> tuple[dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
        """(arg_params, aux_params) by graph name."""
        params = {self._strip(name): p.data() for name, p in self.collect_params().items()}
        aux_names = set(self.graph.list_auxiliary_states())
        args = {n: a for n, a in params.items() if n not in aux_names}
        return args, {n: a for n, a in params.items() if n in aux_names}

    def _strip(self, name: str) -> str:
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name


def make_block(
    symbol: mx.sym.Symbol,
    data_names: Sequence[str],
    arg_params: Mapping[str, mx.nd.NDArray],
    aux_params: Mapping[str, mx.nd.NDArray],
) -> GraphBlock:
    """A ``GraphBlock`` over ``symbol`` holding the given parameters (int8 ones keep their dtype)."""
    block = GraphBlock(symbol, data_names)
    handle, path = tempfile.mkstemp(suffix=".params")
    os.close(handle)
    try:
        save_params(Path(path), arg_params, aux_params)
        # ParameterDict.load is the public way to set int8 arrays with their saved dtype.
        block.collect_params().load(
            path, ctx=mx.cpu(), cast_dtype=True, dtype_source="saved", ignore_extra=True
        )
    finally:
        os.unlink(path)
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def save_params(
    path: Path, arg_params: Mapping[str, mx.nd.NDArray], aux_params: Mapping[str, mx.nd.NDArray]
) -> None:
    """MXNet's own params format, ``arg:``/``aux:`` prefixed as ``HybridBlock.export`` writes."""
    saved = {f"arg:{k}": v for k, v in arg_params.items()}
    saved.update({f"aux:{k}": v for k, v in aux_params.items()})
    mx.nd.save(str(path), saved)


def load_params(path: Path) -> tuple[dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
    saved = mx.nd.load(str(path))
    if not isinstance(saved, dict):
        raise DataError(f"{path} holds a list of arrays, not named parameters")
    args, auxs = {}, {}
    for key, value in saved.items():
        kind, _, name = key.partition(":")
        if kind == "aux":
            auxs[name] = value
        else:
            args[name if kind == "arg" else key] = value
    return args, auxs


def run(block: gluon.Block, inputs: Mapping[str, mx.nd.NDArray]) -> np.ndarray:
    out = block(*inputs.values())
    if isinstance(out, (list, tuple)):
        out = out[0]
    array: np.ndarray = out.asnumpy()
    return array


def forward_tensors(
    symbol: mx.sym.Symbol,
    tensors: Sequence[str],
    arg_params: Mapping[str, mx.nd.NDArray],
    aux_params: Mapping[str, mx.nd.NDArray],
    batches: Iterable[Mapping[str, mx.nd.NDArray]],
) -> Iterator[dict[str, np.ndarray]]:
    """For each batch, the values of the named internal tensors of ``symbol``."""
    internals = symbol.get_internals()
    available = set(internals.list_outputs())
    outputs = []
    for name in tensors:
        key = name if name in available else f"{name}_output"
        outputs.append(internals[key] if key in available else internals[name])
    group = mx.sym.Group(outputs)
    executors: dict[tuple[Any, ...], Any] = {}
    for inputs in batches:
        shape_key = tuple((n, a.shape) for n, a in inputs.items())
        try:
            if shape_key not in executors:
                executors[shape_key] = group.bind(
                    mx.cpu(),
                    {**arg_params, **{n: mx.nd.zeros(a.shape) for n, a in inputs.items()}},
                    aux_states=dict(aux_params),
                    grad_req="null",
                )
            executor = executors[shape_key]
            for name, value in inputs.items():
                executor.arg_dict[name][:] = value
            values = executor.forward(is_train=False)
            values[0].wait_to_read()  # MXNet runs lazily: a shape error surfaces here
        except mx.base.MXNetError as exc:
            shapes = ", ".join(f"{n}={tuple(a.shape)}" for n, a in inputs.items())
            raise DataError(
                f"calibration inputs of shape {shapes} do not fit the model: "
                f"{mxnet_reason(exc)}; give batches of the shape the model was built for"
            ) from exc
        yield {name: v.asnumpy() for name, v in zip(tensors, values, strict=True)}
