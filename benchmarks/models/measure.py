"""Timing and memory helpers shared by the corpus benchmark's runners."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next peak is this step's own (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds and peak RSS growth in MB (VmHWM after a reset, minus RSS before)."""
    reset_peak()
    before = rss_mb()
    start = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - start
    return out, secs, max(peak_rss_mb() - before, 0.0)


def interleaved(
    runners: dict[str, Callable[[], object]], rounds: int, min_round_s: float = 0.2
) -> dict[str, float]:
    """Median seconds per call of each runner; variants alternate within every round so a noisy
    neighbour slows them alike. Each round repeats a call until ``min_round_s`` has passed."""
    inner: dict[str, int] = {}
    for name, run in runners.items():
        run()  # warm-up (first-run allocations, kernel selection)
        start = time.perf_counter()
        run()
        once = max(time.perf_counter() - start, 1e-6)
        inner[name] = max(1, int(min_round_s / once))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                run()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {k: statistics.median(v) for k, v in samples.items()}


def corpus_row(name: str, model: Any) -> dict[str, Any]:
    """The table columns every runner's row starts with, from a corpus entry."""
    return {
        "model": name,
        "package": model.package,
        "exporter": model.exporter,
        "task": model.task,
        "metric": model.metric,
        "batch": model.batch,
    }


def inc_columns(q: Any, secs: float, mem: float) -> dict[str, Any]:
    """inc's quantization time and memory, and what its guards reported, for a runner's row."""
    return {
        "inc_s": secs,
        "inc_mb": mem,
        "inc_speed": q.report.get("speed"),
        "inc_fallback": q.report.get("fallback"),
        "inc_guard_s": q.report.get("guard_seconds"),
        "inc_diagnosis_s": q.report.get("diagnosis_seconds"),
        "inc_repair_s": q.report.get("repair_seconds"),
    }
