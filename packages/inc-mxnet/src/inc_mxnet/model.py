"""The user's model as a float graph: a Gluon ``HybridBlock`` or exported symbol + params files.

Everything downstream works on ``FloatGraph`` (a symbol, its parameters copied out of the
user's block, and the names of its data inputs), so the user's block is only ever read.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
from mxnet import gluon

from inc_core.errors import ModelError

from .runtime import GraphBlock, load_params, mxnet_reason

SYMBOL_SUFFIX = "-symbol.json"
PARAMS_SUFFIX = ".params"


@dataclass(frozen=True)
class FloatGraph:
    """An fp32 MXNet graph and its parameters (copies: never the user's arrays)."""

    symbol: mx.sym.Symbol
    arg_params: dict[str, mx.nd.NDArray]
    aux_params: dict[str, mx.nd.NDArray]
    data_names: tuple[str, ...]


def is_model_path(model: Any) -> bool:
    """A path to ``<prefix>-symbol.json`` or a ``(symbol_file, params_file)`` pair."""
    if isinstance(model, (str, Path)):
        return str(model).endswith(SYMBOL_SUFFIX)
    if isinstance(model, tuple) and len(model) == 2:
        return all(isinstance(p, (str, Path)) for p in model) and str(model[0]).endswith(".json")
    return False


TAKES = (
    f"inc-mxnet takes a gluon.HybridBlock, a path to '<prefix>{SYMBOL_SUFFIX}' or a "
    "(symbol_file, params_file) pair (what HybridBlock.export(prefix) writes)"
)


def is_params_path(model: Any) -> bool:
    """A path to a ``.params`` file alone: the graph is in its ``-symbol.json`` sibling."""
    return isinstance(model, (str, Path)) and str(model).endswith(PARAMS_SUFFIX)


def from_user_model(model: Any) -> FloatGraph:
    """The float graph of a Gluon block or of symbol files; a ``ModelError`` says what is wrong."""
    if isinstance(model, FloatGraph):
        return model
    if is_params_path(model):
        raise ModelError(
            f"{model} holds parameters only; the graph is in '<prefix>{SYMBOL_SUFFIX}': pass that "
            f"path (its .params sibling is found) or the (symbol_file, params_file) pair. {TAKES}"
        )
    if is_model_path(model):
        graph = from_files(*_symbol_and_params(model))
        check_not_quantized(graph.symbol, str(model))
        return graph
    if isinstance(model, GraphBlock):
        raise ModelError(
            "this is already an int8 model (the GraphBlock inc-mxnet returned); quantize the "
            "fp32 block it was made from"
        )
    if isinstance(model, gluon.HybridBlock):
        return from_block(model)
    if isinstance(model, gluon.Block):
        raise ModelError(
            f"{type(model).__name__} is a gluon.Block, not a gluon.HybridBlock, so it cannot be "
            "hybridized: MXNet quantizes a symbolic graph. Derive the model from gluon.HybridBlock "
            "(implement hybrid_forward) or pass exported '<prefix>-symbol.json' and '.params' files"
        )
    raise ModelError(f"{TAKES}; got {type(model).__module__}.{type(model).__qualname__}")


#: ops only an int8 MXNet graph holds (quantize/dequantize, quantized kernels)
_QUANTIZED_PREFIXES = ("_contrib_quantize", "_contrib_quantized_", "_contrib_dequantize")


def check_not_quantized(symbol: mx.sym.Symbol, where: str) -> None:
    """A ``ModelError`` when ``symbol`` is already int8 (quantize ops or quantized fused kernels)."""
    import json

    nodes = json.loads(symbol.tojson())["nodes"]
    found = sorted(
        {
            n["op"]
            for n in nodes
            if n["op"].startswith(_QUANTIZED_PREFIXES)
            or str(n.get("attrs", {}).get("quantized", "")).lower() == "true"
        }
    )
    if found:
        raise ModelError(
            f"{where} is already quantized (it holds {', '.join(found[:4])}); inc quantizes fp32 "
            "graphs: give it the fp32 model the int8 one was made from"
        )


def _input_count(block: gluon.HybridBlock) -> int:
    params = list(inspect.signature(block.hybrid_forward).parameters.values())[1:]  # after F
    registered = set(getattr(block, "_reg_params", {}))
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        and p.default is p.empty
        and p.name not in registered
    ]
    return max(1, len(positional))


def from_block(block: gluon.HybridBlock) -> FloatGraph:
    """Trace ``block`` with symbolic inputs; the block's state (hybridization, params) is untouched."""
    count = _input_count(block)
    names = ("data",) if count == 1 else tuple(f"data{i}" for i in range(count))
    try:
        out = block(*[mx.sym.var(n) for n in names])
    except Exception as exc:
        raise ModelError(
            f"{type(block).__name__} could not be hybridized (traced with symbolic inputs "
            f"{', '.join(names)}): {type(exc).__name__}: {exc}. MXNet quantizes a symbolic graph: "
            "hybrid_forward must use only F.* operators (no .asnumpy(), no Python branching on values)"
        ) from exc
    outputs = _flat(out)
    if not outputs or not all(isinstance(o, mx.sym.Symbol) for o in outputs):
        raise ModelError(
            f"{type(block).__name__} returned {type(out).__name__} for symbolic inputs: "
            "it cannot be hybridized into a graph"
        )
    # recurrent layers return (output, [states]): every symbol becomes an output of the graph
    symbol = outputs[0] if len(outputs) == 1 else mx.sym.Group(outputs)
    arrays: dict[str, mx.nd.NDArray] = {}
    for name, param in block.collect_params().items():
        try:
            arrays[name] = param.data(mx.cpu()).copy()
        except Exception as exc:  # deferred initialization: shapes unknown until a forward pass
            raise ModelError(
                f"parameter {name!r} of {type(block).__name__} has no value yet ({exc}); "
                "initialize the block and run one forward pass on a batch before quantizing"
            ) from exc
    aux_names = set(symbol.list_auxiliary_states())
    args = {n: a for n, a in arrays.items() if n not in aux_names}
    auxs = {n: a for n, a in arrays.items() if n in aux_names}
    return FloatGraph(symbol, args, auxs, names)


def _flat(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [item for part in out for item in _flat(part)]
    return [out]


def _symbol_and_params(model: Any) -> tuple[Path, Path]:
    if isinstance(model, tuple):
        symbol_file, params_file = (Path(p) for p in model)
    else:
        symbol_file = Path(model)
        prefix = symbol_file.name[: -len(SYMBOL_SUFFIX)]
        pattern = re.compile(re.escape(prefix) + r"-\d{4}" + re.escape(PARAMS_SUFFIX))
        found = sorted(
            p
            for p in symbol_file.parent.glob(f"{prefix}-*{PARAMS_SUFFIX}")
            if pattern.fullmatch(p.name)
        )
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise ModelError(
                f"{symbol_file}: expected exactly one '{prefix}-NNNN{PARAMS_SUFFIX}' next to it, found {listed}; "
                "pass (symbol_file, params_file) to choose"
            )
        params_file = found[0]
    for path in (symbol_file, params_file):
        if not path.is_file():
            raise ModelError(f"MXNet model file {path} does not exist")
    return symbol_file, params_file


def from_files(symbol_file: Path, params_file: Path) -> FloatGraph:
    """Read exported symbol JSON and params (``arg:``/``aux:`` prefixed, as ``export`` writes)."""
    try:
        symbol = mx.sym.load(str(symbol_file))
        args, auxs = load_params(params_file)
    except Exception as exc:
        raise ModelError(
            f"could not read MXNet model {symbol_file} + {params_file} ({mxnet_reason(exc)}); "
            f"give the files HybridBlock.export(prefix) wrote. {TAKES}"
        ) from exc
    data_names = tuple(n for n in symbol.list_arguments() if n not in args and n not in auxs)
    if not data_names:
        raise ModelError(
            f"{symbol_file}: every argument has a value in {params_file}; no data input left"
        )
    return FloatGraph(symbol, args, auxs, data_names)
