"""One op's (or one shared input's ops') weights through the algorithm its setting names:
what a backend's ``quantize`` calls for each weight-only op (see ``plan`` for the contract)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .awq import awq
from .gptq import gptq
from .groupwise import QuantizedWeight, check_weight
from .plan import WeightOnlyScheme, recipe_args
from .rtn import rtn
from .stats import InputStats


@dataclass(frozen=True)
class WeightResult:
    """One quantized weight; with AWQ the op's inputs must be divided by ``input_scale``."""

    weight: QuantizedWeight
    #: float32 ``(K,)`` (AWQ), None otherwise
    input_scale: np.ndarray | None = None


def quantize_weights(
    weights: Sequence[Any],
    scheme: WeightOnlyScheme,
    recipes: Mapping[str, Any],
    stats: InputStats | None = None,
) -> list[WeightResult]:
    """Quantize weights ``(K, N_i)`` that read the same input with ``scheme``.

    Pass one weight per op, or several (query, key, value): GPTQ then inverts their shared
    Hessian once (same result as one by one), and AWQ gives them one ``input_scale`` (its
    search runs on them concatenated along ``N``) that can be folded once into their shared
    producer. ``recipes`` are the plan's (``rtn_args``,
    ``gptq_args``, ``awq_args``; defaults filled). ``stats`` are the op's calibration
    statistics, required for GPTQ and AWQ.
    """
    arrays = [check_weight(w) for w in weights]
    if not arrays:
        return []
    algorithm = scheme.algorithm
    bits, g, sym = scheme.bits, scheme.group_size, scheme.scheme
    if algorithm == "RTN":
        args = recipe_args(recipes, "rtn_args")
        return [
            WeightResult(rtn(w, bits, g, sym, args["enable_full_range"], args["enable_mse_search"]))
            for w in arrays
        ]
    if stats is None:
        raise ConfigError(
            f"algorithm {algorithm!r} needs the op's calibration statistics (pass "
            "calib_dataloader); the backend's calibrate gave none for this op"
        )
    widths = [w.shape[1] for w in arrays]
    joined = np.concatenate(arrays, axis=1) if len(arrays) > 1 else arrays[0]
    if algorithm == "GPTQ":
        # output columns are independent given the inputs' Hessian: one run (one inverse of
        # the Hessian) serves every weight reading this input
        args = recipe_args(recipes, "gptq_args")
        if stats.hessian is None:
            raise ValueError("GPTQ needs InputStats.hessian (the collector was not told GPTQ)")
        qw = gptq(
            joined,
            stats.hessian,
            bits,
            g,
            sym,
            float(args["percdamp"]),
            int(args["block_size"]),
            bool(args["act_order"]),
            bool(args["static_groups"]),
            bool(args["enable_full_range"]),
            # the Hessian's sample count: few rows against K shrink it (gptq.shrunk_hessian)
            stats.samples or None,
        )
        return [WeightResult(_columns(qw, a, b)) for a, b in _spans(widths)]
    if algorithm == "AWQ":
        args = recipe_args(recipes, "awq_args")
        if stats.rows is None:
            raise ValueError("AWQ needs InputStats.rows (the collector was not told AWQ)")
        found = awq(
            joined,
            stats.rows,
            bits,
            g,
            sym,
            bool(args["enable_auto_scale"]),
            bool(args["enable_mse_search"]),
            int(args["n_grid"]),
            bool(args["enable_full_range"]),
        )
        return [
            WeightResult(_columns(found.weight, start, stop), found.scale)
            for start, stop in _spans(widths)
        ]
    raise ConfigError(f"algorithm {algorithm!r} is not implemented; allowed: RTN, GPTQ, AWQ")


def _spans(widths: Sequence[int]) -> list[tuple[int, int]]:
    edges = np.cumsum([0, *widths])
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _columns(qw: QuantizedWeight, start: int, stop: int) -> QuantizedWeight:
    """Output columns ``start:stop`` of ``qw`` (groups run along K, so columns are separable)."""
    return QuantizedWeight(
        q=np.ascontiguousarray(qw.q[:, start:stop]),
        scale=np.ascontiguousarray(qw.scale[:, start:stop]),
        zero_point=np.ascontiguousarray(qw.zero_point[:, start:stop]),
        bits=qw.bits,
        group_size=qw.group_size,
        scheme=qw.scheme,
        k=qw.k,
    )
