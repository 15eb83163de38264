"""Save and load inc-mxnet's int8 models in MXNet's own export format.

Files written: ``model-symbol.json`` (the int8 graph) and ``model-0000.params`` (its arrays,
``arg:``/``aux:`` prefixed as ``HybridBlock.export`` writes), so MXNet itself can read them back
with ``gluon.SymbolBlock.imports``. No code is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inc_core.errors import ModelError

from .model import FloatGraph, from_files
from .runtime import GraphBlock, make_block, save_params

SAVED_PREFIX = "model"
SAVED_FILES = (f"{SAVED_PREFIX}-symbol.json", f"{SAVED_PREFIX}-0000.params")


def save(model: Any, directory: Path) -> list[str]:
    """Write ``model`` (a ``GraphBlock`` or a ``FloatGraph``) into ``directory``."""
    if isinstance(model, FloatGraph):
        symbol, (args, auxs) = model.symbol, (model.arg_params, model.aux_params)
    elif hasattr(model, "graph") and hasattr(model, "arrays"):  # a GraphBlock
        symbol, (args, auxs) = model.graph, model.arrays()
    else:
        raise ModelError(
            f"inc-mxnet saves the models it built (GraphBlock), not {type(model).__name__}"
        )
    symbol_file, params_file = SAVED_FILES
    symbol.save(str(directory / symbol_file))
    save_params(directory / params_file, args, auxs)
    return list(SAVED_FILES)


def load(directory: Path) -> GraphBlock:
    """A runnable ``GraphBlock`` (a ``gluon.SymbolBlock``) from the saved JSON and params."""
    graph = from_files(*(directory / f for f in SAVED_FILES))
    return make_block(graph.symbol, graph.data_names, graph.arg_params, graph.aux_params)
