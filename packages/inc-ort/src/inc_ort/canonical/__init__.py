"""Canonicalise converter-made graphs (tf2onnx, paddle2onnx, torch.onnx) before planning.

``canonicalize(model)`` works on a copy and returns ``(model, report)``. Each report entry is
``{"step": str, "rewrites": int, "nodes": [node names], "skipped": str | None, "seconds": float}``
plus step facts under ``"detail"`` (e.g. which shape inference worked). A step that cannot apply
is skipped with its reason and leaves the model as it was before that step; nothing raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._runtime import onnx
from . import affine, constants, layout, patterns, shapes
from ._graph import Graph, Outcome, Skip

Step = Callable[[Graph], Outcome]

#: (name, function, whether it needs types/ranks first); order matters: constants first so the
#: affine and pattern matchers see them, layout again after folding exposes new pairs
STEPS: tuple[tuple[str, Step, bool], ...] = (
    ("constants_to_initializers", constants.constants_to_initializers, False),
    ("initializers_not_inputs", constants.initializers_not_inputs, False),
    ("fold_constants", constants.fold_constants, False),
    ("identities", layout.identities, False),
    ("casts", layout.casts, True),
    ("transposes", layout.transposes, True),
    ("fold_affine", affine.fold_affine, True),
    ("transposes_after_folding", layout.transposes, False),
    ("layernorm", patterns.layernorm, True),
    ("gelu", patterns.gelu, False),
    ("hard_activations", patterns.hard_activations, False),
    ("shapes", shapes.infer, False),
)  # fmt: skip

__all__ = ["STEPS", "canonicalize"]


def canonicalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """The canonical form of ``model`` (a copy; ``model`` is not touched) and the step report."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    report: list[dict[str, Any]] = []
    typed = False
    for name, step, needs_types in STEPS:
        start = time.perf_counter()
        entry: dict[str, Any] = {"step": name, "rewrites": 0, "nodes": [], "skipped": None}
        # each step rewrites a fresh copy, kept when it succeeds: a protobuf (upb) message frees
        # what a rewrite replaces or removes only with the whole message, so rewriting one copy
        # in place through every step left the dead tensors of each step in memory
        candidate = onnx.ModelProto()
        candidate.CopyFrom(work)
        inferred: list[bool] = []
        try:
            outcome = _run(candidate, step, needs_types and not typed, inferred)
            entry["nodes"] = outcome.nodes
            entry["rewrites"] = len(outcome.nodes)
            if outcome.detail:
                entry["detail"] = outcome.detail
            # rewrites leave stale value_info behind: infer again when needed (below)
            work = candidate
        except Skip as exc:
            entry["skipped"] = str(exc)
        except Exception as exc:  # never crash the user's run on a graph we do not understand
            entry["skipped"] = f"failed: {type(exc).__name__}: {exc}"
        typed = (typed or bool(inferred)) and not entry["rewrites"]
        del candidate
        entry["seconds"] = round(time.perf_counter() - start, 4)
        report.append(entry)
    return work, report


def _run(model: onnx.ModelProto, step: Any, infer: bool, inferred: list[bool]) -> Any:
    """One step on ``model`` (rewritten in place), types inferred first when ``infer`` (then
    ``inferred`` gets an entry: the caller's record holds even when the step fails)."""
    g = Graph(model)
    if infer:
        shapes.types_only(g)
        inferred.append(True)
    outcome = step(g)
    g.prune()
    return outcome
