"""Accuracy-aware tuning: the fp32 baseline, the strategy loop, stop rules, history and resume.

A strategy (``inc_core.strategy``) proposes batches of plans; the ``Tuner`` turns each plan into
a trial (quantize + evaluate, serially or on the user's executor), writes the history after every
trial, and picks the model to return. ``tune`` never returns None: when no candidate meets the
goal it raises ``TuningError`` carrying the closest candidate and the trial table.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import digest
from .errors import ConfigError, DataError, IncError
from .history import Baseline, History, fingerprint, history_path
from .model import QuantizedModel
from .progress import Progress
from .report import render, rows
from .session import Session
from .space import QuantPlan
from .strategy import Batch, Outcome, TuningSpace
from .strategy import registry as strategy_registry
from .strategy.space import tunable_recipes
from .trial import (
    Evaluator,
    OutputProbe,
    Trial,
    TrialJob,
    TrialResult,
    describe,
    measure,
    warm_latencies,
)

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "./nc_workspace"
TUNER_OPTIONS = ("seed", "latency_guard", "latency_margin")
# An op type is learned slow only when quantizing it costs clearly more than timing noise.
LEARN_MARGIN = 0.05


class TuningError(IncError):
    """No candidate met the accuracy goal; ``best`` is the closest one, ``trials`` the table."""

    def __init__(
        self, message: str, best: QuantizedModel | None, trials: list[dict[str, Any]]
    ) -> None:
        super().__init__(message)
        self.best = best
        self.trials = trials


def _history_file(workspace: str | Path) -> Path:
    """The history file of ``workspace``, checked now: a workspace that cannot be a folder is a
    ``ConfigError`` before any evaluation, not after the first trial. Nothing is created here
    (the first history write does that), so a run that fails early leaves no empty folder."""
    path = history_path(workspace)
    if path.exists() and not path.is_file():
        raise ConfigError(f"workspace={str(workspace)!r}: {path} exists and is not a file")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or (folder != path.parent and not os.access(folder, os.W_OK)):
        what = "is a file" if folder.exists() else "cannot be created"
        raise ConfigError(
            f"workspace={str(workspace)!r} must be a directory (or a .json history file), but "
            f"{folder} {what}; give a folder path"
        )
    if folder == path.parent and not os.access(folder, os.W_OK):
        raise ConfigError(f"workspace={str(workspace)!r}: {folder} is not writable")
    return path


def _calibration_digest(session: Session) -> str | None:
    if session.calib_inputs is not None:
        return digest.data_digest(session.calib_inputs)
    return digest.identity(session.calib_func)


class Tuner:
    """Runs one strategy against one session until a stop rule fires."""

    def __init__(
        self,
        session: Session,
        evaluator: Evaluator,
        executor: Executor | None = None,
        workspace: str | Path | None = None,
        resume_from: str | Path | None = None,
        progress: bool | None = None,
    ) -> None:
        self.session = session
        self.evaluator = evaluator
        self.executor = executor
        conf = session.conf
        self.criterion = conf.accuracy_criterion
        self.tuning = conf.tuning_criterion
        self.strategy_name = conf.effective_strategy
        self.weights = self.tuning.objective_weights()
        strategy_cls = strategy_registry.get(self.strategy_name)
        options = dict(self.tuning.strategy_kwargs or {})
        allowed = (*TUNER_OPTIONS, *strategy_cls.options)
        for key in options:
            if key not in allowed:
                raise ConfigError(
                    f"strategy_kwargs key {key!r} is not used by strategy {self.strategy_name!r}; "
                    f"allowed: {', '.join(allowed)}"
                )
        self.guard = bool(options.pop("latency_guard", True)) and "performance" in self.weights
        self.margin = float(options.pop("latency_margin", 0.0))
        seed = int(options.pop("seed", 0))

        inputs = getattr(session, "latency_inputs", None) or session.calib_inputs
        self.latency_inputs = list(inputs) if inputs and "performance" in self.weights else None
        self.measure_size = bool({"modelsize", "footprint"} & set(self.weights))

        base = session.default_plan
        ops = [s.op for s in session.spaces]
        recipes = {} if session.trains else dict(base.recipes)
        tunable = tunable_recipes(session.spaces, recipes)
        for recipe in tunable:
            if recipe.name == "smooth_quant_args":  # a backend gets one alpha, not the list
                base = base.with_recipes({recipe.name: recipe.values[0]})
        self.space = TuningSpace(session.spaces, base, tunable)
        probe = None
        if strategy_cls.needs_probe and not session.trains and session.calib_inputs:
            try:
                probe = OutputProbe(session, session.calib_inputs)
            except NotImplementedError as exc:
                log.warning("strategy %s: %s; falling back in model order", self.strategy_name, exc)
        self.strategy = strategy_cls(
            self.space,
            probe=probe,
            keep_searching=self.tuning.timeout > 0,
            seed=seed,
            options=options,
        )

        self.history = History(
            _history_file(workspace or DEFAULT_WORKSPACE), {}, self.strategy_name
        )
        self.weights_digest = session.backend.fingerprint(session.model)
        stamp = fingerprint(
            [(op.name, op.type) for op in ops],
            conf.to_dict(),
            weights=self.weights_digest,
            calibration=_calibration_digest(session),
            evaluation=evaluator.identity(),
            eval_data=evaluator.first_batch_digest(),
        )
        self.history.fingerprint = stamp
        self.resumed: dict[str, Trial] = {}
        resumed_baseline = None
        resumed_elapsed = 0.0
        if resume_from is not None:
            previous = History.load(resume_from, stamp)
            self.resumed = {t.key: t for t in previous.trials}
            resumed_baseline = previous.baseline
            resumed_elapsed = previous.elapsed
        self.baseline: Baseline | None = resumed_baseline
        self.start = time.perf_counter() - resumed_elapsed
        self.trials: list[Trial] = []
        self.done: dict[str, Trial] = {}
        self.natives: dict[str, Any] = {}
        self.slow_types: set[str] = set()
        self._learned_upto = 0
        self.ended: Trial | None = None
        self.stopped = ""
        self._checked_pickle = False
        self.progress = Progress(self.tuning.max_trials, f"tuning ({self.strategy_name})", progress)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> QuantizedModel:
        try:
            if self.baseline is None:
                self.progress.stage("evaluating the fp32 baseline")
                self.baseline = self._measure_baseline()
            self.history.baseline = self.baseline
            self._save()
            self.progress.stage("calibrating")
            search = self.strategy.search()
            try:
                batch = next(search)
                while True:
                    outcomes = self._run_batch(batch)
                    if self.stopped:
                        break
                    self._learn_slow_types()
                    batch = search.send(outcomes)
            except StopIteration:
                self.stopped = self.stopped or "search space exhausted"
            finally:
                search.close()
                self._learn_slow_types()
        finally:
            self.progress.close()
        return self._finish()

    def _measure_baseline(self) -> Baseline:
        backend, model = self.session.backend, self.session.model
        accuracy = self.evaluator(backend, model)
        if (
            self.evaluator.eval_func is not None
            and self.weights_digest is not None
            and backend.fingerprint(model) != self.weights_digest
        ):
            # eval_func got the model itself (it could not be copied) and changed it: every
            # later candidate would be built from the changed weights
            raise DataError(
                "eval_func changed the weights of the fp32 model it was given; evaluation "
                "must not modify the model (evaluate a copy if it must change it)"
            )
        if not math.isfinite(accuracy):
            raise DataError(
                f"the fp32 model's accuracy is {accuracy}; tuning needs a finite number"
            )
        latency, noise = None, 0.0
        if self.latency_inputs is not None:
            runs = warm_latencies(backend, model, self.latency_inputs)
            if runs:
                latency = min(runs)
                noise = (max(runs) - latency) / latency if latency > 0 else 0.0
        size = measure(backend.model_size, model) if self.measure_size else None
        return Baseline(accuracy, latency, size, noise)

    def _slower_than(self, latency: float, reference: float, floor: float = 0.0) -> bool:
        """Slower beyond the user's margin and beyond the fp32 model's timing noise."""
        noise = self.baseline.noise if self.baseline else 0.0
        return latency > reference * (1 + max(self.margin, 2 * noise, floor))

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _timed_out(self) -> bool:
        return bool(self.tuning.timeout > 0 and self._elapsed() >= self.tuning.timeout)

    def _run_batch(self, batch: Batch) -> list[Outcome]:
        planned: list[tuple[str, QuantPlan, Any]] = []
        budget = self.tuning.max_trials - len(self.trials)
        keys: set[str] = set()
        for proposed in batch.plans:
            plan = self._rewrite(proposed)
            key = plan.key()
            if not plan.quantized_ops():
                planned.append(("skip", plan, None))
            elif key in self.done or key in keys:
                planned.append(("done", plan, key))
            elif budget <= 0 or self._timed_out():
                self.stopped = "timeout" if self._timed_out() else "max_trials"
                break
            else:
                budget -= 1
                keys.add(key)
                if key in self.resumed:
                    planned.append(("resumed", plan, self.resumed[key]))
                else:
                    planned.append(("new", plan, self._job(plan)))
        futures: dict[int, Future[TrialResult]] = {}
        if self.executor is not None:
            for i, (kind, _, job) in enumerate(planned):
                if kind == "new" and isinstance(job, TrialJob):
                    futures[i] = self.executor.submit(job)
        outcomes: list[Outcome] = []
        try:
            for i, (kind, plan, payload) in enumerate(planned):
                if kind == "skip":
                    outcomes.append(Outcome(plan, None, math.inf, False, "no op left to quantize"))
                    continue
                if kind == "done":
                    trial = self.done[payload]
                elif kind == "resumed":
                    trial = self._record(replace(payload, phase=batch.phase), None)
                else:
                    if isinstance(payload, TrialResult):  # calibration failed in the backend
                        result = payload
                    else:
                        result = futures[i].result() if i in futures else payload()
                    trial = self._record(self._trial(plan, batch.phase, result), result.model)
                outcome = Outcome(trial.plan, trial.accuracy, trial.loss, trial.passed, trial.error)
                outcomes.append(outcome)
                if outcome.passed and batch.ends_on_pass and self.tuning.timeout == 0:
                    self.ended = trial
                    self.stopped = "goal met"
                    break
                if outcome.passed and batch.until_pass:
                    break
                if len(self.trials) >= self.tuning.max_trials:
                    self.stopped = "max_trials"
                    break
                if self._timed_out():
                    self.stopped = "timeout"
                    break
        finally:
            for future in futures.values():
                future.cancel()
        if len(self.trials) >= self.tuning.max_trials:
            self.stopped = self.stopped or "max_trials"
        return outcomes

    def _job(self, plan: QuantPlan) -> TrialJob | TrialResult:
        """The job for ``plan``; a failed result when calibration fails inside the backend."""
        session = self.session
        custom = session.trains
        ranges = None
        if not custom:
            try:
                ranges = session.ranges_for(plan)
            except (ConfigError, DataError):
                raise
            except Exception as exc:
                return TrialResult(error=describe(exc))
        job = TrialJob(
            backend=session.backend,
            model=session.model,
            plan=plan,
            ranges=ranges,
            evaluator=self.evaluator,
            latency_inputs=self.latency_inputs,
            measure_size=self.measure_size,
            session=session if custom else None,
            keep_model=self.executor is None,
            conf=session.conf,
        )
        if self.executor is None:
            return job
        # each job builds its own backend: backend caches (inference sessions) are neither
        # thread-safe nor picklable
        job = job.portable()
        if not isinstance(self.executor, ThreadPoolExecutor) and not self._checked_pickle:
            self._checked_pickle = True
            try:
                pickle.dumps(job)
            except Exception as exc:
                raise ConfigError(
                    f"executor={type(self.executor).__name__} runs trials in other processes, so "
                    "every part of a trial must pickle: the eval_func (a module-level function, "
                    f"not a lambda or closure), the model and the backend ({describe(exc)})"
                ) from exc
        return job

    # -- trials -----------------------------------------------------------------------------

    def _trial(self, plan: QuantPlan, phase: str, result: TrialResult) -> Trial:
        assert self.baseline is not None
        finite = result.accuracy is None or math.isfinite(result.accuracy)
        if result.error is None and not finite:
            result = replace(result, error=f"the evaluation returned {result.accuracy}")
        if result.error is not None or result.accuracy is None:
            loss, met = math.inf, False
        else:
            loss = self.criterion.loss(self.baseline.accuracy, result.accuracy)
            met = self.criterion.is_met(self.baseline.accuracy, result.accuracy)
        slower = (
            self.guard
            and result.latency is not None
            and self.baseline.latency is not None
            and self._slower_than(result.latency, self.baseline.latency)
        )
        return Trial(
            index=0,
            phase=phase,
            plan=plan,
            accuracy=result.accuracy,
            loss=loss,
            accuracy_met=met,
            passed=met and not slower and result.error is None,
            slower=bool(slower),
            latency=result.latency,
            size=result.size,
            error=result.error,
            seconds=result.seconds,
        )

    def _record(self, trial: Trial, native: Any) -> Trial:
        trial = replace(trial, index=len(self.trials) + 1)
        self.trials.append(trial)
        self.done[trial.key] = trial
        if native is not None:
            self.natives[trial.key] = native
        self._prune_natives()
        self._save()
        status = "error" if trial.error else ("pass" if trial.passed else "miss")
        acc = "-" if trial.accuracy is None else f"{trial.accuracy:.4g}"
        self.progress.update(f"#{trial.index} {status} acc={acc} fp32_ops={len(trial.fp32_ops)}")
        log.info(
            "trial %d (%s): %s accuracy=%s loss=%s fp32 ops=%s%s",
            trial.index,
            trial.phase,
            status,
            acc,
            trial.loss,
            trial.fp32_ops,
            f" error={trial.error}" if trial.error else "",
        )
        return trial

    def _save(self) -> None:
        self.history.trials = self.trials
        self.history.elapsed = self._elapsed()
        self.history.save()

    def _prune_natives(self) -> None:
        """Keep only the native models that may still be returned (the rest are rebuilt)."""
        wanted = {t.key for t in (self._choose(), self._closest()) if t is not None}
        for key in list(self.natives):
            if key not in wanted:
                del self.natives[key]

    # -- the latency guard ------------------------------------------------------------------

    def _rewrite(self, plan: QuantPlan) -> QuantPlan:
        """Drop op types learned to run slower quantized (they go back to float)."""
        if not self.slow_types:
            return plan
        names = [
            n for n in self.space.fallback_candidates(plan) if plan.op_types[n] in self.slow_types
        ]
        return self.space.fallback(plan, names) if names else plan

    def _learn_slow_types(self) -> None:
        """An op type runs slower quantized when two measured plans differ only in ops of that
        type being quantized, and the quantized one is slower by more than the margin."""
        if not self.guard or self.baseline is None or self.baseline.latency is None:
            return
        measured = [(self.space.all_float(), self.baseline.latency)]
        measured += [
            (t.plan, t.latency) for t in self.trials if t.latency is not None and not t.error
        ]
        for i in range(max(1, self._learned_upto + 1), len(measured)):
            for j in range(i):
                for (a, lat_a), (b, lat_b) in (
                    (measured[i], measured[j]),
                    (measured[j], measured[i]),
                ):
                    op_type = self._only_type_quantized(a, b)
                    if op_type and self._slower_than(lat_a, lat_b, LEARN_MARGIN):
                        if op_type not in self.slow_types:
                            log.info(
                                "op type %s runs slower quantized here; keeping it in fp32", op_type
                            )
                        self.slow_types.add(op_type)
        self._learned_upto = len(measured) - 1

    @staticmethod
    def _only_type_quantized(a: QuantPlan, b: QuantPlan) -> str | None:
        """The op type when ``a`` differs from ``b`` only by quantizing some ops of one type."""
        if a.recipes != b.recipes:
            return None
        types = set()
        for name, op in a.ops.items():
            other = b.ops[name]
            if op == other:
                continue
            if not (op.quantized and not other.quantized):
                return None
            types.add(a.op_types[name])
        return types.pop() if len(types) == 1 else None

    # -- the end ----------------------------------------------------------------------------

    def _score(self, trial: Trial) -> float:
        """The objective, lower is better: each term relative to fp32, weighted."""
        assert self.baseline is not None
        float_share = (len(trial.fp32_ops) + 1) / (len(trial.plan.ops) + 1)
        total = 0.0
        for name, weight in self.weights.items():
            if name == "performance":
                if trial.latency is not None and self.baseline.latency:
                    value = trial.latency / self.baseline.latency
                else:
                    value = float_share
            elif name == "accuracy":
                value = 1.0 + trial.loss
            else:  # modelsize, footprint: the serialized size stands for both
                if trial.size is not None and self.baseline.size:
                    value = trial.size / self.baseline.size
                else:
                    value = float_share
            total += weight * value
        return total

    def _choose(self) -> Trial | None:
        passing = [t for t in self.trials if t.passed]
        if not passing:
            return None
        if self.tuning.timeout == 0:
            return self.ended or passing[-1]
        return min(passing, key=lambda t: (self._score(t), t.index))

    def _closest(self) -> Trial | None:
        usable = [t for t in self.trials if t.error is None]
        met = [t for t in usable if t.accuracy_met]
        if met:  # all of them ran slower than fp32: the fastest one
            return min(met, key=lambda t: (t.latency or 0.0, t.index))
        return min(usable, key=lambda t: (t.loss, t.index)) if usable else None

    def _model_for(self, trial: Trial, report: dict[str, Any]) -> QuantizedModel:
        native = self.natives.get(trial.key)
        if native is None:
            native = self.session.build(trial.plan)
        report["quantized_ops"] = len(trial.plan.quantized_ops())
        report["float_ops"] = len(trial.plan.float_ops())
        result = self.session.wrap(native, trial.plan, report)
        result.report["per_op"] = result.op_report()
        return result

    def _report(self, chosen: Trial | None, table: list[dict[str, Any]]) -> dict[str, Any]:
        plan = chosen.plan if chosen else self.space.base
        return {
            "quantization_seconds": self._elapsed(),
            "ops": len(plan.ops),
            "tuning": {
                "strategy": self.strategy_name,
                "objective": self.weights,
                "accuracy_criterion": {
                    "criterion": self.criterion.criterion,
                    "tolerable_loss": self.criterion.tolerable_loss,
                    "higher_is_better": self.criterion.higher_is_better,
                },
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "trials_used": len(self.trials),
                "stopped": self.stopped,
                "chosen": chosen.index if chosen else None,
                "fp32_ops": chosen.fp32_ops if chosen else None,
                "slow_op_types": sorted(self.slow_types),
                "history": str(self.history.path),
                "trials": table,
                "table": render(table),
            },
        }

    def _finish(self) -> QuantizedModel:
        assert self.baseline is not None
        relative = self.criterion.criterion == "relative"
        chosen = self._choose()
        if chosen is not None:
            table = rows(self.baseline, self.trials, chosen.index, relative)
            text = render(table)
            log.info("tuning chose trial %d of %d:\n%s", chosen.index, len(self.trials), text)
            self.progress.write(text)
            return self._model_for(chosen, self._report(chosen, table))
        best = self._closest()
        table = rows(self.baseline, self.trials, best.index if best else None, relative)
        message = self._miss_message(best)
        log.info("%s\n%s", message, render(table))
        self.progress.write(render(table))
        model: QuantizedModel | None
        if best is not None:
            model = self._model_for(best, self._report(best, table))
        else:
            model, why = self._unevaluated_default(table)
            message = f"{message}; {why}"
        raise TuningError(message, model, table)

    def _unevaluated_default(
        self, table: list[dict[str, Any]]
    ) -> tuple[QuantizedModel | None, str]:
        """When no candidate could be scored: the default int8 model (not evaluated), or why
        there is none."""
        plan = self.session.default_plan
        try:
            native = self.natives.get(plan.key())
            if native is None:
                native = self.session.build(plan)
        except (ConfigError, DataError):
            raise
        except Exception as exc:
            return (
                None,
                f"no model to return: building the default int8 model failed ({describe(exc)})",
            )
        report = self._report(None, table)
        report["tuning"]["unevaluated_default"] = True
        report["quantized_ops"] = len(plan.quantized_ops())
        report["float_ops"] = len(plan.float_ops())
        result = self.session.wrap(native, plan, report)
        result.report["per_op"] = result.op_report()
        return result, "TuningError.best holds the default int8 model, which no evaluation scored"

    def _miss_message(self, best: Trial | None) -> str:
        crit = self.criterion
        unit = "%" if crit.criterion == "relative" else ""
        scale = 100.0 if crit.criterion == "relative" else 1.0
        goal = f"{crit.criterion} loss <= {crit.tolerable_loss * scale:g}{unit}"
        head = f"no candidate met the accuracy goal ({goal}) in {len(self.trials)} trials ({self.stopped})"
        if best is None:
            errors = sorted({t.error for t in self.trials if t.error})
            first = f": {errors[0]}" if errors else ""
            return f"{head}; every candidate failed{first} (see the trial table)"
        if best.accuracy_met:
            base = self.baseline.latency if self.baseline else None
            return (
                f"{head}: the candidates meeting the accuracy goal all ran slower than the fp32 "
                f"model; the fastest, trial {best.index}, took {(best.latency or 0) * 1e3:.3f} ms vs "
                f"{(base or 0) * 1e3:.3f} ms for fp32. Set strategy_kwargs={{'latency_guard': False}}"
                " or objective='accuracy' to accept it; TuningError.best holds it"
            )
        return (
            f"{head}: the closest, trial {best.index} (fp32 ops: {', '.join(best.fp32_ops) or 'none'}), "
            f"lost {best.loss * scale:.4g}{unit}, {(best.loss - crit.tolerable_loss) * scale:.4g}{unit} "
            "beyond the goal; TuningError.best holds it"
        )


def tune(
    session: Session,
    *,
    eval_func: Callable[[Any], Any] | None = None,
    eval_dataloader: Iterable[Any] | None = None,
    eval_metric: Any = None,
    executor: Executor | None = None,
    workspace: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool | None = None,
) -> QuantizedModel:
    """Search ``session``'s tuning space for the model the config's criteria ask for.

    Called by ``quantization.fit`` and ``training.fit`` when the user gives an evaluation.
    Returns the chosen ``QuantizedModel`` (its ``report["tuning"]`` holds the trial table) or
    raises ``TuningError`` with the closest candidate.

    Stop rules: ``max_trials`` counts every quantize + evaluate (the fp32 baseline is not a
    trial); with ``timeout=0`` the first candidate meeting the goal wins, with ``timeout>0`` the
    search goes on until the strategy is done, the budget is spent or the time is up, and the
    best passing candidate by ``objective`` wins. With objective ``performance`` a candidate
    measured slower than fp32 (beyond timing noise and ``strategy_kwargs["latency_margin"]``)
    never wins, and op types learned to run slower quantized stay in fp32; turn this off with
    ``strategy_kwargs={"latency_guard": False}``.

    ``executor`` is any ``concurrent.futures.Executor``. Each job carries the backend's class
    (a fresh backend runs it), the model, the plan, the calibrated ranges and the user's
    evaluation; beyond a ``ThreadPoolExecutor`` (a ``ProcessPoolExecutor``, or on a cluster
    ``dask.distributed.Client(...).get_executor()``) jobs are pickled, so ``eval_func`` must be
    a module-level function. The result equals the serial run: a candidate wins only after every earlier one
    has reported. ``workspace`` (default ``./nc_workspace``) receives ``tuning_history.json``
    after every trial; ``resume_from`` (that folder or file) replays the trials it holds.
    ``progress`` shows a bar (tqdm when installed); None means only when stderr is a terminal.
    """
    if eval_func is None and (eval_dataloader is None or eval_metric is None):
        raise ConfigError("tuning needs eval_func, or eval_dataloader together with eval_metric")
    if eval_dataloader is not None and iter(eval_dataloader) is eval_dataloader:
        raise DataError(
            "eval_dataloader is a one-shot iterator (a generator?); tuning evaluates every "
            "candidate, so give a list or a re-iterable loader"
        )
    evaluator = Evaluator(eval_func, eval_dataloader, eval_metric)
    tuner = Tuner(session, evaluator, executor, workspace, resume_from, progress)
    return tuner.run()
