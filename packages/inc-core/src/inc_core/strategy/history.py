"""Trials and their history file: written atomically after every trial, read back to resume."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..space import QuantPlan

FILENAME = "tuning_history.json"
FORMAT = 1


@dataclass
class Baseline:
    """The fp32 model's measurements (not a trial)."""

    accuracy: float
    latency: float | None = None
    size: int | None = None
    #: relative spread of repeated latency measurements of the fp32 model (timing noise)
    noise: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "latency": self.latency,
            "size": self.size,
            "noise": self.noise,
        }


@dataclass
class Trial:
    """One quantize + evaluate of a candidate plan."""

    index: int
    phase: str
    plan: QuantPlan
    accuracy: float | None
    loss: float
    accuracy_met: bool
    passed: bool
    slower: bool = False
    latency: float | None = None
    size: int | None = None
    error: str | None = None
    seconds: float = 0.0
    key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.plan.key()

    @property
    def fp32_ops(self) -> list[str]:
        return self.plan.float_ops()

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "phase": self.phase,
            "accuracy": self.accuracy,
            "loss": self.loss if math.isfinite(self.loss) else None,
            "accuracy_met": self.accuracy_met,
            "passed": self.passed,
            "slower": self.slower,
            "latency": self.latency,
            "size": self.size,
            "error": self.error,
            "seconds": self.seconds,
            "fp32_ops": self.fp32_ops,
            "plan": self.plan.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trial:
        loss = data.get("loss")
        return cls(
            index=int(data["index"]),
            phase=str(data["phase"]),
            plan=QuantPlan.from_dict(data["plan"]),
            accuracy=data.get("accuracy"),
            loss=math.inf if loss is None else float(loss),
            accuracy_met=bool(data["accuracy_met"]),
            passed=bool(data["passed"]),
            slower=bool(data.get("slower", False)),
            latency=data.get("latency"),
            size=data.get("size"),
            error=data.get("error"),
            seconds=float(data.get("seconds", 0.0)),
        )


def fingerprint(ops: list[tuple[str, str]], config: Mapping[str, Any]) -> str:
    """What must match for a history to be resumed: the model's ops and the config, except the
    budget (``max_trials``, ``timeout``), which a user may raise when resuming."""
    conf = json.loads(json.dumps(config, default=str))
    conf.get("tuning_criterion", {}).pop("max_trials", None)
    conf.get("tuning_criterion", {}).pop("timeout", None)
    blob = json.dumps({"ops": ops, "config": conf}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def history_path(location: str | os.PathLike[str]) -> Path:
    """A workspace folder or a history file -> the history file."""
    path = Path(location)
    return path if path.suffix == ".json" else path / FILENAME


class History:
    """The trial table of one tuning run, as a JSON file rewritten after every trial."""

    def __init__(self, path: Path, fingerprint: str, strategy: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.strategy = strategy
        self.baseline: Baseline | None = None
        self.trials: list[Trial] = []
        self.elapsed = 0.0

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "strategy": self.strategy,
            "elapsed": self.elapsed,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "trials": [t.to_dict() for t in self.trials],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, default=str)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, location: str | os.PathLike[str], expected: str) -> History:
        """Read a history to resume from; it must come from the same model and config."""
        path = history_path(location)
        if not path.is_file():
            raise ConfigError(f"resume_from={str(location)!r}: no tuning history at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"resume_from: {path} is not valid JSON ({exc})") from exc
        if data.get("format") != FORMAT:
            raise ConfigError(
                f"resume_from: {path} has format {data.get('format')!r}, expected {FORMAT}"
            )
        if data.get("fingerprint") != expected:
            raise ConfigError(
                f"resume_from: {path} was written for another model or config "
                "(only max_trials and timeout may change when resuming)"
            )
        history = cls(path, expected, str(data.get("strategy", "")))
        base = data.get("baseline")
        if base is not None:
            history.baseline = Baseline(
                base["accuracy"], base.get("latency"), base.get("size"), base.get("noise", 0.0)
            )
        history.trials = [Trial.from_dict(t) for t in data.get("trials", [])]
        history.elapsed = float(data.get("elapsed", 0.0))
        return history
