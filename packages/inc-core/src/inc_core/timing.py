"""The one latency measurement every backend's ``Backend.latency`` uses.

Same rules for every framework, so fp32 and int8 (and one backend and another) are timed
alike: each distinct input shape is run once untimed first (kernel selection, tracing, weight
packing and memory arenas happen at a shape's first call and are not the model's speed), then
every batch is timed once and the median is returned (a stray slow run does not move it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, MutableSet, Sequence
from typing import Any

import numpy as np

from .errors import DataError


def shape_key(feed: Any) -> Hashable:
    """Shapes and dtypes of the arrays in ``feed`` (nested in tuples, lists and dicts); what
    makes a run of the same model take another path."""
    if isinstance(feed, dict):
        return tuple(
            (str(k), shape_key(v)) for k, v in sorted(feed.items(), key=lambda kv: str(kv[0]))
        )
    if isinstance(feed, (list, tuple)):
        return tuple(shape_key(v) for v in feed)
    shape = getattr(feed, "shape", None)
    if shape is not None:
        return (tuple(int(d) for d in shape), str(getattr(feed, "dtype", "")))
    return type(feed).__name__


def latency(
    run: Callable[[Any], Any],
    feeds: Sequence[Any],
    *,
    key: Callable[[Any], Hashable] = shape_key,
    warm: MutableSet[Hashable] | None = None,
) -> float:
    """Median seconds of ``run(feed)`` over ``feeds``, after one untimed run per input shape.

    ``feeds`` are batches already in the form ``run`` takes (conversion is not timed). ``key``
    tells shapes apart; ``warm`` holds the keys already run (a backend that keeps a session
    across calls passes its set, so a shape its predictions ran is not run again).
    """
    if not feeds:
        raise DataError("latency needs at least one batch")
    seen: MutableSet[Hashable] = set() if warm is None else warm
    for feed in feeds:
        shape = key(feed)
        if shape not in seen:
            run(feed)
            seen.add(shape)
    times = []
    for feed in feeds:
        start = time.perf_counter()
        run(feed)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
