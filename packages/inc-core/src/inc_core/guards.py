"""The default guards of ``fit``: an int8 model is never silently wrong, nor slower than fp32.

``quantization.fit`` calls ``run_guards`` on its default path (no evaluation) once the
default plan is built, unless ``PostTrainingQuantConfig(guards=False)``:

1. **Per-op diagnosis** -- each quantized op's output, int8 vs fp32, as ``sqnr_db``
   (``Backend.op_outputs`` on one held-out batch); it ranks the ops for step 2.
2. **Fidelity guard** -- int8 vs fp32 model outputs on calibration inputs held back from
   calibration (``inc_core.fidelity``). Below the threshold the most sensitive ops
   (``fallback_order``) fall back to fp32: the fewest of 1, 2, 4, ... of them that holds,
   found by bisection from a first count the per-op diagnosis sizes, then narrowed where the
   measured margins put the threshold (``secant_probe``). Every op in fp32 holds without a
   comparison (it is the fp32 model) and is built only when it is the one returned.
3. **Speed guard** -- fp32 vs int8 latency on one batch (``inc_core.speed``: interleaved
   rounds until a sequential test with a dead band decides, so a busy machine gives the same
   answer run after run). Unless int8 is clearly faster, the backend's variants are timed;
   unless it is faster (or a tie whose best rounds are clearly faster), candidates with one
   op type (or, in a one-type model, one region of ops) in fp32 are timed, and each that is
   clearly faster is kept (greedy, bounded). When no int8 build got clearly faster than
   fp32, one last candidate is timed: every op in fp32 as the backend builds it (on ONNX
   Runtime inc's canonical graph). Clearly faster than the best int8 build, it is returned
   with a warning (no int8 op): an int8 model slower than fp32 is never the answer when fp32
   is at hand. Else the fastest int8 model found is returned, with a warning when int8 stays
   slower.

Fidelity goes first: a fallback for speed only ever makes outputs closer to fp32, not the
other way round. The report keys are ``fidelity``, ``speed``, ``fallback``, ``op_diagnosis``,
``guard_seconds`` (all of the above), ``repair_seconds`` (the part of it spent searching after
a check failed: fallback builds, their comparisons and rounds) and ``diagnosis_seconds`` (the
part spent on the per-op diagnosis, which ``fit`` measures with ``guards=False`` too: the
guards' own cost is the difference).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import fidelity
from .backend import Backend
from .data import batch_size, splittable, take_samples
from .errors import ConfigError, DataError, GuardWarning
from .model import QuantizedModel
from .session import Session
from .space import FLOAT_DTYPES, QuantPlan
from .speed import EARLY_BAND, IMPROVES, MIN_ROUNDS, NOT_FASTER, Bench, Timing
from .strategy.space import TuningSpace

log = logging.getLogger(__name__)

#: the speed search may spend this share of the time quantization took, but at least
#: SEARCH_MIN_SECONDS (small models quantize in milliseconds), and build at most MAX_CANDIDATES
SEARCH_SHARE = 0.2
SEARCH_MIN_SECONDS = 1.0
MAX_CANDIDATES = 8
#: a model with one quantized op type is searched in this many contiguous regions of ops
MAX_REGIONS = 4
#: int8 clearly below this ratio to fp32 (``speed.verdict``) is clearly faster: the backend's
#: variants (another quantization format) are timed otherwise, where they may pay for their cost
CLEARLY_FASTER = NOT_FASTER * (1 - EARLY_BAND)
#: builds the fidelity fallback may add to narrow the gap between the doubling steps
#: failing and holding counts, while that gap is wider than REFINE_SHARE of the candidates:
#: a narrower one leaves few ops in fp32 needlessly, and each probe is a whole build
REFINE_PROBES = 3
REFINE_SHARE = 1 / 10
#: the per-op diagnosis runs on this many samples of the batch: on nudenet-320n 4 of 8 samples
#: rank the ops' sqnr_db as 8 do (Spearman 0.99, median change 0.3 dB) at half the cost of
#: running both models with every op output exposed
OP_SAMPLES = 4


def first_samples(batch: Any, count: int) -> Any:
    """The first ``count`` samples of ``batch`` (all of it when it holds no more, or cannot be
    cut; None stays None)."""
    if batch is None or not splittable(batch) or batch_size(batch) <= count:
        return batch
    return take_samples(batch, count)


def diagnosis_batch(batch: Any) -> Any:
    """The first ``OP_SAMPLES`` samples of ``batch`` (all of it when it cannot be cut)."""
    return first_samples(batch, OP_SAMPLES)


def op_sqnr(
    backend: Backend,
    fp32: Any,
    int8: Any,
    batch: Any,
    ops: Sequence[str],
    reference: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``sqnr_db`` of each op in ``ops`` that both models expose (``Backend.op_outputs``).

    ``reference`` is the fp32 model's ``op_outputs`` when already computed.
    """
    if not ops:
        return {}
    if reference is None:
        reference = backend.op_outputs(fp32, batch, ops)
    if not reference:
        return {}
    outputs = backend.op_outputs(int8, batch, [op for op in ops if op in reference])
    out: dict[str, float] = {}
    for op in ops:
        if op not in reference or op not in outputs:
            continue
        ref, got = reference[op], outputs[op]
        if getattr(ref, "shape", None) != getattr(got, "shape", None):
            log.warning(
                "op %s: fp32 and int8 outputs differ in shape (%s vs %s); no sqnr_db",
                op,
                getattr(ref, "shape", "?"),
                getattr(got, "shape", "?"),
            )
            continue
        out[op] = round(fidelity.sqnr_db(ref, got), 3)
    return out


def diagnose(
    backend: Backend,
    fp32: Any,
    plan: QuantPlan,
    native: Any,
    batch: Any,
    sqnr: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """``report["op_diagnosis"]``: op -> {"sqnr_db", "runs_as"} where known.

    A backend bug in ``op_outputs``/``runs_as`` costs the diagnosis, never the model: it is
    logged and the values stay unknown.
    """
    if sqnr is None:
        sqnr = {}
        if batch is not None:
            try:
                sqnr = op_sqnr(backend, fp32, native, batch, plan.quantized_ops())
            except (ConfigError, DataError):
                raise
            except Exception as exc:
                log.warning(
                    "per-op diagnosis failed in op_outputs: %s: %s", type(exc).__name__, exc
                )
    try:
        runs_as = dict(backend.runs_as(native))
    except Exception as exc:
        log.warning("per-op diagnosis failed in runs_as: %s: %s", type(exc).__name__, exc)
        runs_as = {}
    quantized = set(plan.quantized_ops())
    out: dict[str, dict[str, Any]] = {}
    for name in plan.ops:
        row: dict[str, Any] = {}
        if name in quantized and name in sqnr:
            row["sqnr_db"] = sqnr[name]
        if name in runs_as:
            row["runs_as"] = str(runs_as[name])
        if row:
            out[name] = row
    return out


def fallback_order(plan: QuantPlan, candidates: Sequence[str], sqnr: dict[str, float]) -> list[str]:
    """The order ops go back to fp32 for fidelity: lowest ``sqnr_db`` and earliest in the graph,
    taken in turn.

    An op's ``sqnr_db`` carries the error of every op before it, so it points at where error
    shows, not always where it enters: the first ops read exact inputs and measure clean, yet
    their rounding grows through the whole network (YOLOv8n's class scores and basic-pitch's
    CQT front end recover only with their first convs in fp32, which rank last by ``sqnr_db``).
    """
    order = {name: i for i, name in enumerate(plan.ops)}
    by_sqnr = sorted(candidates, key=lambda n: (n not in sqnr, sqnr.get(n, 0.0), order[n]))
    by_position = sorted(candidates, key=lambda n: order[n])
    ranked: list[str] = []
    for pair in zip(by_sqnr, by_position, strict=True):
        ranked += [n for n in dict.fromkeys(pair) if n not in ranked]
    return ranked


def step_counts(candidates: int) -> list[int]:
    """The fallback sizes the fidelity guard chooses from: 1, 2, 4, ... ops, and all of them."""
    counts, count = [], 1
    while count < candidates:
        counts.append(count)
        count *= 2
    return [*counts, candidates] if candidates else []


def first_probe(ranked: Sequence[str], sqnr: dict[str, float], counts: Sequence[int]) -> int:
    """The index in ``counts`` the fidelity guard builds first: the middle one, or lower when
    few ops measure below ``fidelity.MIN_SQNR_DB`` (the largest count within their number).

    Only where the bisection starts: it finds the same smallest holding count from anywhere.
    The number of ops below 15 dB does not predict that count (MiniLM-L6: 9 below, 32 needed;
    basic-pitch 11, 32; YOLOv8n 35, 8; PP-OCRv4 det many, 4), so it only lowers the start:
    one outlier op is then found in one probe. From the middle each of those takes 3 probes
    (the doubling 1, 2, 4, ... took 6, 6, 4 and 3).
    """
    below = sum(
        1 for name in ranked if sqnr.get(name, fidelity.SQNR_CLAMP_DB) < fidelity.MIN_SQNR_DB
    )
    index = 0
    while index + 1 < len(counts) and counts[index + 1] <= below:
        index += 1
    return min(index, (len(counts) - 1) // 2)


def smallest_holding(counts: Sequence[int], first: int, holds: Callable[[int], bool]) -> int | None:
    """The index of the smallest of ``counts`` for which ``holds(index)`` is true, by
    bisection from index ``first``; None when none holds (the last index was probed then).

    With ``holds`` monotone (more ops in fp32, closer to fp32) this is the count the doubling
    1, 2, 4, ... stops at, in about log2(len(counts)) + 1 probes instead of up to len(counts).
    """
    low, high, index = 0, len(counts) - 1, min(max(first, 0), len(counts) - 1)
    found: int | None = None
    while low <= high:
        if holds(index):
            found, high = index, index - 1
        else:
            low = index + 1
        index = (low + high) // 2
    return found


def refine(
    failing: int,
    holding: int,
    holds: Callable[[int], bool],
    candidates: int | None = None,
    margins: Mapping[int, float | None] | None = None,
) -> int:
    """The smallest count between ``failing`` (not holding) and ``holding`` that holds: at most
    ``REFINE_PROBES`` probes, and none once the gap is within ``REFINE_SHARE`` of
    ``candidates`` (the ops that may fall back; default: ``holding``). Each probe is where the
    measured fidelity ``margins`` (count -> ``fidelity.margin_db``, kept up to date by
    ``holds``) say the threshold is crossed (``secant_probe``), or the middle: without
    margins, and after a probe that did not halve the gap.

    The doubling steps leave gaps as wide as half the candidates: PicoDet held with all 112
    ops fp32 and failed with 64 (14.5 dB against 15), so the guard returned no int8 op. A gap
    of a few ops is not worth a build each: YOLOv8n's 4..8 of 77 cost two more builds (1.2 s,
    a fifth of its quantization time) for two more int8 convs.
    """
    enough = max(1, int(REFINE_SHARE * (holding if candidates is None else candidates)))
    halve = not margins
    for _ in range(REFINE_PROBES):
        gap = holding - failing
        if gap <= enough:
            break
        probe = (failing + holding) // 2 if halve else secant_probe(failing, holding, margins or {})
        if holds(probe):
            holding = probe
        else:
            failing = probe
        # a line that only shaved the gap (SQNR flat near the holding end, MiniLM-L6: 16..32,
        # then 26, 24, 23 all held) is followed by a halving, as regula falsi's safeguard
        halve = not margins or 2 * (holding - failing) > gap
    return holding


def secant_probe(failing: int, holding: int, margins: Mapping[int, float | None]) -> int:
    """The count between ``failing`` and ``holding`` where the fidelity margin crosses 0 dB,
    taken as linear in log2(count + 1) through the measured counts nearest the gap (both
    ends, or the two highest failing counts when the holding end has no measure: all ops in
    fp32 is not compared), kept inside the middle three quarters of the gap; the middle
    when fewer than two counts are measured.

    SQNR falls about evenly per doubling of the fp32 ops (PicoDet: 4.8, 10.4, 14.5 dB at 8,
    32, 64 of 112), so the line lands near the count that holds (70) where halving the gap
    took three builds (88, 76, 70).
    """
    middle = (failing + holding) // 2
    known = sorted((c, m) for c, m in margins.items() if m is not None)
    low = [point for point in known if point[0] <= failing]
    high = [point for point in known if point[0] >= holding]
    if low and high:
        (c0, m0), (c1, m1) = low[-1], high[0]
    elif len(low) >= 2:
        (c0, m0), (c1, m1) = low[-2], low[-1]
    else:
        return middle
    x0, x1 = math.log2(c0 + 1), math.log2(c1 + 1)
    if m1 <= m0:
        return middle  # no rise to follow
    crossing = x0 - m0 * (x1 - x0) / (m1 - m0)
    crossing = min(max(crossing, math.log2(failing + 1)), math.log2(holding + 1))
    count = math.ceil(2**crossing - 1)
    edge = max(1, (holding - failing) // 8)
    return min(max(count, failing + edge), holding - edge)


def held_out_references(session: Session) -> tuple[list[Any] | None, dict[str, Any]]:
    """The fp32 model's outputs on the held-out batches, and the start of
    ``report["fidelity"]``: its threshold and held-out inputs, or why nothing is compared
    (``"skipped"``, with None for the outputs)."""
    held = session.held_out
    if not held:
        why = "no calibration batches to compare outputs on (calib_func, or no calibration data)"
        return None, {"skipped": why}
    try:
        references = [session.backend.predict(session.model, x) for x in held]
    except NotImplementedError:
        return None, {"skipped": f"backend {session.backend.name!r} has no predict"}
    info: dict[str, Any] = {
        "threshold": fidelity.threshold(),
        "held_out_batches": len(held),
        "held_out_samples": sum(batch_size(x) for x in held),
        "held_out": session.held_out_how,
    }
    return references, info


def _warn(message: str) -> None:
    log.warning("%s", message)
    warnings.warn(message, GuardWarning, stacklevel=_caller_outside_inc_core())


def _caller_outside_inc_core() -> int:
    """The ``stacklevel`` that points a warning at the user's line calling into inc_core."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(2)  # the caller of _warn
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


class Guards:
    """One run of the guards over one session; fills ``report``."""

    def __init__(self, session: Session, report: dict[str, Any], build_seconds: float) -> None:
        self.session = session
        self.backend = session.backend
        self.report = report
        self.build_seconds = build_seconds
        self.start = time.perf_counter()
        self.base = session.default_plan
        self.space = TuningSpace(session.spaces, self.base)
        self.fallback: list[dict[str, Any]] = []
        #: seconds of the fallback searches (fidelity and speed), apart from the checks
        self.repair_seconds = 0.0
        inputs = session.held_out or session.calib_inputs or []
        self.batch = inputs[0] if inputs else None
        self.op_batch = diagnosis_batch(self.batch)
        self._ranges: Any = None
        self._reference_ops: dict[str, Any] | None = None
        #: the fp32 outputs on the held-out batches, and whether the current model holds
        self._references: list[Any] = []
        self._holds = True
        #: seconds the last per-op measurement took (``_op_sqnr``)
        self._op_seconds = 0.0

    # -- building candidates ----------------------------------------------------------------

    def build(self, plan: QuantPlan) -> Any:
        """``plan`` quantized with the default plan's ranges: a plan with fewer quantized ops
        needs a subset of the same fp32 activation statistics, so no new calibration run."""
        if self._ranges is None:
            self._ranges = self.session.ranges_for(self.base)
        return self.backend.quantize(self.session.model, plan, self._ranges)

    def _record(
        self, names: Sequence[str], why: str, extra: dict[str, dict[str, Any]] | None = None
    ) -> None:
        for name in names:
            row = {"op": name, "type": self.base.op_types.get(name, ""), "why": why}
            row.update((extra or {}).get(name, {}))
            self.fallback.append(row)

    # -- the steps --------------------------------------------------------------------------

    def run(self, plan: QuantPlan, native: Any) -> tuple[QuantPlan, Any]:
        default_plan = plan
        plan, native, sqnr = self._fidelity(plan, native)
        plan, native = self._speed(plan, native)
        # the per-op diagnosis of the returned model: the default plan's when the fidelity
        # guard needed it to rank ops and nothing changed since, else measured once here
        if sqnr is None or plan != default_plan:
            sqnr = self._op_sqnr(native, plan.quantized_ops())
        # the measurement the report shows is the diagnosis fit makes with guards=False too;
        # one that only ranked ops for a fallback is the fidelity guard's own cost
        start, measured = time.perf_counter(), self._op_seconds
        self.report["op_diagnosis"] = diagnose(
            self.backend, self.session.model, plan, native, self.op_batch, sqnr
        )
        now = time.perf_counter()
        self.report["fallback"] = self.fallback
        self.report["guard_seconds"] = now - self.start
        self.report["diagnosis_seconds"] = measured + now - start
        self.report["repair_seconds"] = self.repair_seconds
        return plan, native

    def _op_sqnr(self, native: Any, ops: Sequence[str]) -> dict[str, float]:
        start = time.perf_counter()
        try:
            return self._measure_op_sqnr(native, ops)
        finally:
            self._op_seconds = time.perf_counter() - start

    def _measure_op_sqnr(self, native: Any, ops: Sequence[str]) -> dict[str, float]:
        if self.op_batch is None:
            return {}
        try:
            if self._reference_ops is None:
                self._reference_ops = self.backend.op_outputs(
                    self.session.model, self.op_batch, self.base.quantized_ops()
                )
            return op_sqnr(
                self.backend, self.session.model, native, self.op_batch, ops, self._reference_ops
            )
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            log.warning("per-op diagnosis failed in op_outputs: %s: %s", type(exc).__name__, exc)
            return {}

    def _fidelity(
        self, plan: QuantPlan, native: Any
    ) -> tuple[QuantPlan, Any, dict[str, float] | None]:
        """The fidelity guard. Returns the plan, its model, and the default plan's per-op
        ``sqnr_db`` when it was measured (only to rank ops for a fallback)."""
        references, info = held_out_references(self.session)
        self.report["fidelity"] = info
        if references is None:
            return plan, native, None
        if self.session.held_out_how == "calibration batch reused":
            log.info(
                "fidelity guard: one calibration batch only; comparing on it (also used for ranges)"
            )
        self._references = references
        before = self._compare(references, native)
        if before["holds"]:
            info.update(before)
            return plan, native, None
        repair_start = time.perf_counter()
        sqnr = self._op_sqnr(native, plan.quantized_ops())
        ranked = fallback_order(plan, self.space.fallback_candidates(plan), sqnr)
        counts = step_counts(len(ranked))
        steps: list[dict[str, Any]] = []
        built_at: dict[int, tuple[QuantPlan, Any, dict[str, Any] | None]] = {}
        margins: dict[int, float | None] = {0: fidelity.margin_db(before["outputs"])}

        def holds_with(count: int) -> bool:
            """Build the plan with the first ``count`` ranked ops in fp32 and compare. With no
            op left int8 it is the fp32 model as the backend builds it: it holds without a
            comparison, and is built only if it is the one returned."""
            candidate = self.space.fallback(plan, ranked[:count])
            if not candidate.quantized_ops():
                steps.append({"fp32_ops": count, "holds": True, "compared": "no op int8"})
                built_at[count] = (candidate, None, None)
                margins[count] = None
                return True
            built = self.build(candidate)
            after = self._compare(references, built)
            steps.append(
                {
                    "fp32_ops": count,
                    "sqnr_db": after["sqnr_db"],
                    "agreement": after["agreement"],
                    "holds": after["holds"],
                }
            )
            built_at[count] = (candidate, built, after)
            margins[count] = fidelity.margin_db(after["outputs"])
            return bool(after["holds"])

        found = smallest_holding(
            counts, first_probe(ranked, sqnr, counts), lambda i: holds_with(counts[i])
        )
        if found is None:  # nothing held: every ranked op in fp32 (always probed then)
            count = counts[-1] if counts else 0
        else:
            failing = counts[found - 1] if found else 0
            count = refine(failing, counts[found], holds_with, len(ranked), margins)
        plan, native, compared = built_at[count] if counts else (plan, native, before)
        if native is None:  # every op fp32, not built while probing
            native = self.build(plan)
        after = compared or self._compare(references, native)
        self.repair_seconds += time.perf_counter() - repair_start
        self._holds = bool(after["holds"])
        info.update(after)
        info["before"] = {
            k: before[k] for k in ("cosine", "sqnr_db", "agreement", "channel_sqnr_db")
        }
        info["steps"] = steps
        # the order the ops fell back in (lowest sqnr_db first), as far as it matters
        info["ranked"] = [{"op": n, "sqnr_db": sqnr.get(n)} for n in ranked[: max(8, 2 * count)]]
        names = ranked[:count]
        self._record(names, "fidelity", {n: {"sqnr_db": sqnr[n]} for n in names if n in sqnr})
        what = _metrics_text(before)
        if after["holds"]:
            _warn(
                f"int8 outputs were below the fidelity threshold on held-out calibration data "
                f"({what}; threshold: SQNR >= {fidelity.MIN_SQNR_DB:g} dB, or argmax agreement >= "
                f"{fidelity.MIN_AGREEMENT:g}, and every channel >= "
                f"{fidelity.MIN_CHANNEL_SQNR_DB:g} dB); kept the {count} most sensitive op(s) in "
                f"fp32: {_names(names)}; now {_metrics_text(after)}. See report['fallback']"
            )
        else:
            _warn(
                f"int8 outputs stay below the fidelity threshold on held-out calibration data "
                f"even with {count} op(s) in fp32 ({_names(names)}): {_metrics_text(after)} "
                f"(was {what}). Check the calibration data, or give an eval_func to tune"
            )
        return plan, native, sqnr

    def _compare(self, references: list[Any], native: Any) -> dict[str, Any]:
        outputs = [self.backend.predict(native, x) for x in self.session.held_out]
        return fidelity.compare(references, outputs)

    def _speed(self, plan: QuantPlan, native: Any) -> tuple[QuantPlan, Any]:
        if self.batch is None:
            self.report["speed"] = {"skipped": "no calibration batch to time"}
            return plan, native
        if not plan.quantized_ops():
            self.report["speed"] = {"skipped": "no op left quantized"}
            return plan, native
        try:
            bench = Bench(self.backend, self.session.model, self.batch)
            # "above" is measured twice before acting: one busy stretch must not cost int8 ops
            timing = bench.decide(native, NOT_FASTER, act="above")
        except NotImplementedError:
            self.report["speed"] = {"skipped": f"backend {self.backend.name!r} has no latency"}
            return plan, native
        # a tie (rounds that cannot tell) is searched too: the search keeps only candidates
        # clearly faster, so a search that finds none changes nothing; only "above" warns.
        # Not a tie whose best rounds put int8 below CLEARLY_FASTER: only a busy machine's
        # spread kept it from "faster", and that spread keeps any candidate from being
        # confirmed faster too (YOLOv8n at 0.80x: 3 candidates, 2.5 s, none kept)
        slower = timing.verdict == "above" or (
            timing.verdict is None and timing.ratio > CLEARLY_FASTER
        )
        first = timing
        search = _Search(bench, plan, native, timing)
        if not _clearly_faster(timing):
            # not clearly faster: the backend's other builds of the same plan may be
            self._variants(search)
            slower = slower and not _faster(search)
        best_int8: Timing | None = None
        if slower:
            search.next_stage()
            self._fallbacks(search)
            if not _faster(search) and self._all_fp32(search):
                best_int8 = search.best_int8
        if search.tried:
            self.repair_seconds += time.perf_counter() - search.start
        plan, native, timing = search.plan, search.native, search.timing
        self.report["speed"] = _speed_report(timing, self.batch, bench.calls, first, search.tried)
        if best_int8 is not None:
            self._say_all_fp32(best_int8)
            return plan, native
        # a tie whose best rounds put int8 at or above fp32 is said too: a busy machine that
        # cannot tell must not hand back a slower int8 model silently
        unclear = search.timing.against(NOT_FASTER) is None and timing.ratio >= 1.0
        if slower and (_slower(search) or unclear):
            fallen = [_names(r["fp32"]) for r in search.tried if "fp32" in r]
            kept = [row["op"] for row in self.fallback if row["why"] == "slower"]
            also = f"kept {_names(kept)} in fp32 (faster so), but " if kept else ""
            _warn(
                f"int8 is {timing.ratio:.2f}x the time of fp32 on this machine (best of "
                f"{len(timing.ratios)} interleaved rounds each, batch {batch_size(self.batch)}); "
                f"{also}no candidate tried made int8 faster than fp32 (fp32 candidates tried: "
                f"{'; '.join(fallen) or 'none possible'}). Returning the fastest int8 model "
                "found; report['speed'] has the numbers"
            )
        return plan, native

    def _variants(self, search: _Search) -> None:
        """Time the backend's other builds of the plan (``Backend.variants``, e.g. another
        quantization format); keep one that is clearly faster and as faithful."""
        try:
            variants = list(self.backend.variants(self.session.model, search.plan))
        except Exception as exc:
            log.warning("speed guard: variants failed: %s: %s", type(exc).__name__, exc)
            return
        for name, variant in variants:
            if search.spent(self.build_seconds):
                break
            self._try(search, name, variant, check_fidelity=True)

    def _all_fp32(self, search: _Search) -> bool:
        """The last candidate, when no int8 build was clearly faster than fp32: every op in
        fp32, built by the backend like any candidate (ONNX Runtime: inc's canonical graph,
        folded and fused; PP-LCNet's opset-11 HardSwish chains fold into its convs and run
        1.5x the user's graph, which no int8 layout of it beat). Kept when ``Bench.decide``
        says it is clearly faster than the best int8 build (by ``IMPROVES``), so a model
        whose int8 only ties fp32 stays int8. Not tried when a rule of the user asks an
        integer dtype. Returns whether it was kept."""
        if _asks_integer(self.session.conf):
            return False
        fp32 = search.plan.quantized_ops()
        plan = self.space.fallback(search.plan, fp32)
        if plan.quantized_ops():
            return False  # an op that cannot run in fp32
        search.next_stage()
        best_int8 = search.timing
        if not self._try(search, "all ops fp32", plan, fp32=fp32):
            return False
        search.best_int8 = best_int8
        return True

    def _say_all_fp32(self, best_int8: Timing) -> None:
        """The report keys and the warning of a returned model without int8 ops."""
        self.report["speed"].update(
            returned="all ops fp32", best_int8_ratio=round(best_int8.ratio, 4)
        )
        _warn(
            f"no int8 layout beat fp32 on this machine (the fastest int8 model tried was "
            f"{best_int8.ratio:.2f}x the time of fp32, best of {len(best_int8.ratios)} "
            f"interleaved rounds each, batch {batch_size(self.batch)}), so the returned model "
            f"has no int8 op: it is the {self.backend.name} backend's fp32 build of the model "
            "(on ONNX Runtime, inc's canonical graph). guards=False, or an "
            "op_name_dict/op_type_dict rule asking int8, keeps int8; report['speed'] and "
            "report['fallback'] have the numbers"
        )

    def _fallbacks(self, search: _Search) -> None:
        """Greedy: each group of ops (see ``_groups``) in fp32 in turn, kept when faster."""
        seen: set[frozenset[str]] = set()
        for name, group in self._groups(search.plan):
            # a group already fp32 (a kernel group before its whole type) is not retried
            todo = [n for n in group if search.plan.ops[n].quantized]
            if not todo or frozenset(todo) in seen:
                continue
            seen.add(frozenset(todo))
            if search.spent(self.build_seconds):
                log.info("speed guard: search budget spent after %d candidates", len(search.tried))
                break
            candidate = self.space.fallback(search.plan, todo)
            if not candidate.quantized_ops():
                continue  # all ops fp32 is the last candidate (_all_fp32), timed once
            kept = self._try(search, f"fp32: {name}", candidate, fp32=todo)
            if kept and _faster(search):
                break

    def _try(
        self,
        search: _Search,
        name: str,
        candidate: QuantPlan,
        fp32: list[str] | None = None,
        check_fidelity: bool = False,
    ) -> bool:
        """Build and time one candidate against the current model; keep it when it is
        confirmed faster by the ``IMPROVES`` margin. Returns whether it was kept."""
        row: dict[str, Any] = {"name": name}
        if fp32 is not None:
            row["fp32"] = fp32
        search.tried.append(row)
        limit = search.timing.ratio * IMPROVES
        try:
            built = self.build(candidate)
            if check_fidelity and not self._faithful(built, row):
                row["kept"] = False
                return False
            measured = search.bench.decide(built, limit, act="below")
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            log.warning("speed guard: candidate %s failed: %s", name, exc)
            row.update(error=f"{type(exc).__name__}: {exc}", kept=False)
            return False
        row.update(ratio=round(measured.ratio, 4), kept=False)
        if measured.verdict != "below":
            return False  # slower, or a tie: the current model stays
        row["kept"] = True
        before = search.timing.ratio
        search.plan, search.native, search.timing = candidate, built, measured
        if fp32 is not None:
            ratios = {"ratio_before": round(before, 4), "ratio_after": round(measured.ratio, 4)}
            self._record(fp32, "slower", {n: ratios for n in fp32})
        return True

    def _faithful(self, built: Any, row: dict[str, Any]) -> bool:
        """A variant is kept only where its outputs hold the fidelity threshold as well as
        the current model's do (the prediction also warms its session for timing)."""
        if not self._references:
            return True
        after = self._compare(self._references, built)
        row["sqnr_db"] = round(after["sqnr_db"], 3)
        return bool(after["holds"]) or not self._holds

    def _groups(self, plan: QuantPlan) -> list[tuple[str, list[str]]]:
        """What the speed search tries to put in fp32, named: the backend's kernel groups
        first (``Backend.kernel_groups``: depthwise convs, attention MatMuls, ...: few ops
        whose int8 kernels are known to pay least), then each weightless op type (quantizing
        an element-wise op adds work and saves none), then each weighted op type; a model
        with one op type is tried in contiguous regions of its ops instead of types."""
        names = self.space.fallback_candidates(plan)
        by_type: dict[str, list[str]] = {}
        for name in names:
            by_type.setdefault(plan.op_types[name], []).append(name)
        weightless = [(t, g) for t, g in by_type.items() if plan.ops[g[0]].weight is None]
        weighted = [(t, g) for t, g in by_type.items() if plan.ops[g[0]].weight is not None]
        kernels = [
            (label, [n for n in group if n in by_type.get(plan.op_types.get(n, ""), [])])
            for label, group in self._kernel_groups().items()
        ]
        kernels = [(label, group) for label, group in kernels if group]
        if len(by_type) >= 2:
            return kernels + weightless + weighted
        if len(names) < 2:
            return kernels
        regions = min(MAX_REGIONS, len(names))
        size = -(-len(names) // regions)
        return kernels + [
            (f"{names[i]} .. {names[min(i + size, len(names)) - 1]}", names[i : i + size])
            for i in range(0, len(names), size)
        ]

    def _kernel_groups(self) -> dict[str, list[str]]:
        try:
            return {
                str(k): list(v) for k, v in self.backend.kernel_groups(self.session.model).items()
            }
        except Exception as exc:
            log.warning("speed guard: kernel_groups failed: %s: %s", type(exc).__name__, exc)
            return {}


def _clearly_faster(timing: Timing) -> bool:
    """Whether int8 is clearly faster than fp32, so the variants are not timed: the rounds
    say so against ``CLEARLY_FASTER``, or they said "faster" against ``NOT_FASTER`` and the
    best rounds put it below ``CLEARLY_FASTER`` (on a busy machine the gap between two best
    rounds alone kept YOLOv8n at 0.38x fp32 from counting as clearly faster, and a QOperator
    build cost 3 s of building, comparing and timing to be turned down)."""
    if timing.against(CLEARLY_FASTER) == "below":
        return True
    return timing.against(NOT_FASTER) == "below" and timing.ratio <= CLEARLY_FASTER


def _asks_integer(conf: Any) -> bool:
    """Whether an ``op_name_dict``/``op_type_dict`` rule asks an integer dtype: the user
    wants int8 there, so the speed guard never hands back a model without it."""
    for key in ("op_name_dict", "op_type_dict"):
        for tensors in (getattr(conf, key, None) or {}).values():
            for fields in tensors.values():
                dtypes = fields.get("dtype", ()) if isinstance(fields, dict) else ()
                if isinstance(dtypes, str):
                    dtypes = (dtypes,)
                if any(d not in FLOAT_DTYPES for d in dtypes):
                    return True
    return False


def _faster(search: _Search) -> bool:
    """Whether the current model is clearly faster than fp32 (by the ``NOT_FASTER`` margin)."""
    return search.timing.against(NOT_FASTER) == "below"


def _slower(search: _Search) -> bool:
    """Whether the current model is still clearly not faster than fp32 (a tie is not)."""
    return search.timing.against(NOT_FASTER) == "above"


@dataclass
class _Search:
    """The speed search's state: the best model so far, its timing, and what was tried."""

    bench: Bench
    plan: QuantPlan
    native: Any
    timing: Timing
    tried: list[dict[str, Any]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)
    #: rows of ``tried`` before the current stage (variants, fp32 groups, all ops fp32)
    before: int = 0
    #: the fastest int8 build's timing, once the all-fp32 build replaced it
    best_int8: Timing | None = None

    def next_stage(self) -> None:
        """The fp32 groups after the variants: they share the time, and the first is tried."""
        self.before = len(self.tried)

    def spent(self, build_seconds: float) -> bool:
        """Whether the search has spent its time, or this stage its candidates; a stage's
        first candidate is always tried."""
        count = len(self.tried) - self.before
        if not count:
            return False
        budget = max(SEARCH_MIN_SECONDS, SEARCH_SHARE * build_seconds)
        return count >= MAX_CANDIDATES or time.perf_counter() - self.start > budget


def _speed_report(
    timing: Timing, batch: Any, calls: int, first: Timing, tried: list[dict[str, Any]]
) -> dict[str, Any]:
    """``report["speed"]``: the returned model against fp32 (medians of the same rounds)."""
    said = timing.against(NOT_FASTER)
    out: dict[str, Any] = {
        "fp32_ms": round(timing.fp32_ms, 4),
        "int8_ms": round(timing.model_ms, 4),
        "ratio": round(timing.ratio, 4),
        "batch": batch_size(batch),
        "rounds": len(timing.ratios),
        "faster": said == "below",
        # the sequential test's answer: "faster", "not faster", or "tie" (rounds could not tell)
        "verdict": {"below": "faster", "above": "not faster", None: "tie"}[said],
        "latency_calls": calls,
    }
    if tried:
        out["default_int8_ms"] = round(first.model_ms, 4)
        out["default_ratio"] = round(first.ratio, 4)
        out["tried"] = tried
    return out


def _metrics_text(metrics: dict[str, Any]) -> str:
    text = f"SQNR {metrics['sqnr_db']:.1f} dB, cosine {metrics['cosine']:.4f}"
    if metrics.get("agreement") is not None:
        text += f", argmax agreement {metrics['agreement']:.3f}"
    channel = metrics.get("channel_sqnr_db")
    if channel is not None:
        text += f", worst channel {channel:.1f} dB"
        if channel < fidelity.MIN_CHANNEL_SQNR_DB:
            # a whole-output SQNR that passes must not read as if nothing failed
            text += " (a channel is lost)"
    return text


def _names(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def run_guards(
    session: Session, plan: QuantPlan, native: Any, report: dict[str, Any], build_seconds: float
) -> tuple[QuantPlan, Any]:
    """Run the guards on the default plan's model; returns the plan and model to hand back."""
    return Guards(session, report, build_seconds).run(plan, native)


def unguarded(session: Session, plan: QuantPlan, native: Any, report: dict[str, Any]) -> None:
    """The report of ``guards=False``: the same keys, nothing measured but the diagnosis."""
    off = {"skipped": "guards=False"}
    report["fidelity"] = dict(off)
    report["speed"] = dict(off)
    report["fallback"] = []
    batch = session.calib_inputs[0] if session.calib_inputs else None
    start = time.perf_counter()
    report["op_diagnosis"] = diagnose(
        session.backend, session.model, plan, native, diagnosis_batch(batch)
    )
    report["diagnosis_seconds"] = time.perf_counter() - start


def weight_only_checks(
    session: Session, plan: QuantPlan, native: Any, report: dict[str, Any]
) -> None:
    """The guards' report keys for a weight-only model on the default path: measured and
    warned about, but no op falls back.

    Weight-only quantization trades compute for memory: a kernel that reads 4-bit weights may
    be slower than fp32 on some shapes (long prompts) and still be what the user wants, so the
    speed guard measures and warns instead of keeping ops in fp32; the fidelity of the outputs
    on held-out calibration batches likewise (fall back or mix bits per op by tuning with an
    evaluation, or by ``op_name_dict``).
    """
    unguarded(session, plan, native, report)
    if not session.conf.guards:
        return
    batch = (session.held_out or session.calib_inputs or [None])[0]
    report["speed"] = _weight_only_speed(session, native, batch)
    references, info = held_out_references(session)
    report["fidelity"] = info
    if references is None:
        return
    outputs = [session.backend.predict(native, x) for x in session.held_out]
    measured = fidelity.compare(references, outputs)
    info.update(measured)
    if not measured["holds"]:
        _warn(
            "weight-only outputs are below the fidelity threshold on held-out calibration data "
            f"({_metrics_text(measured)}); nothing fell back: keep sensitive ops in fp32 or at "
            "8 bits with op_name_dict, use a smaller group_size or algorithm 'GPTQ'/'AWQ' (with "
            "calib_dataloader), or tune with an eval_func (report['per_op'] has each op's sqnr_db)"
        )


def _weight_only_speed(session: Session, native: Any, batch: Any) -> dict[str, Any]:
    """``report["speed"]`` of a weight-only model: fp32 against it on one calibration sample,
    ``MIN_ROUNDS`` rounds, with a warning when it is not faster (nothing falls back, so the
    rounds only inform). One sample is the shape weight-only kernels are for (a decode step
    is one row); a whole batch of long prompts cost SmolLM2-135M's fit 142 s of 200."""
    if batch is None:
        return {"skipped": "no calibration batch to time (pass calib_dataloader to measure)"}
    batch = first_samples(batch, 1)
    try:
        bench = Bench(session.backend, session.model, batch)
        timing = bench.time(native, rounds=MIN_ROUNDS)
    except NotImplementedError:
        return {"skipped": f"backend {session.backend.name!r} has no latency"}
    out = _speed_report(timing, batch, bench.calls, timing, [])
    if timing.against(NOT_FASTER) == "above":
        _warn(
            f"the weight-only model is {timing.ratio:.2f}x the time of fp32 on this machine "
            f"(best of {len(timing.ratios)} interleaved rounds each, batch {out['batch']}); "
            "nothing fell back: weight-only quantization saves memory, and its kernels pay "
            "most on small batches (a decode step). report['speed'] has the numbers"
        )
    return out


def after_tuning(session: Session, result: QuantizedModel) -> QuantizedModel:
    """The guards' report keys for a tuned model: the user's evaluation decided fidelity, so
    nothing falls back here; speed and the diagnosis are measured on the returned model."""
    start = time.perf_counter()
    report = result.report
    base = session.default_plan
    fallen = [n for n in base.quantized_ops() if not result.plan.ops[n].quantized]
    report["fallback"] = [
        {"op": n, "type": base.op_types.get(n, ""), "why": "tuning"} for n in fallen
    ]
    report["fidelity"] = {"skipped": "the evaluation given to fit decided (tuning)"}
    batch = session.calib_inputs[0] if session.calib_inputs else None
    if not session.conf.guards:
        report["speed"] = {"skipped": "guards=False"}
    elif batch is None:
        report["speed"] = {"skipped": "no calibration batch to time"}
    elif not result.plan.quantized_ops():
        report["speed"] = {"skipped": "no op left quantized"}
    else:
        try:
            bench = Bench(session.backend, session.model, batch)
            timing = bench.time(result.model)
            report["speed"] = _speed_report(timing, batch, bench.calls, timing, [])
        except NotImplementedError:
            report["speed"] = {"skipped": f"backend {session.backend.name!r} has no latency"}
    diagnosis_start = time.perf_counter()
    report["op_diagnosis"] = diagnose(
        session.backend, session.model, result.plan, result.model, diagnosis_batch(batch)
    )
    report["diagnosis_seconds"] = time.perf_counter() - diagnosis_start
    report["guard_seconds"] = time.perf_counter() - start
    report["per_op"] = result.op_report()
    return result
